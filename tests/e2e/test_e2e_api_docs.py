"""The OpenAPI description and the docs page, as Envoy serves them on the API's origin.

The docs page is opened in a real browser: Debian's chromium, driven by Playwright
through its executable path (`make browser-tools` installs it; no browser download).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from agentmesh.devstack import paths
from agentmesh.devstack.__main__ import _banner
from agentmesh.devstack.stack import DevStack

UI_TIMEOUT_MS = 30_000


def test_the_openapi_description_is_served_as_generated(anonymous_http: httpx.Client) -> None:
    # Public: it describes the API and holds no tenant's data.
    response = anonymous_http.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == paths.openapi_description().read_bytes()
    assert response.json()["openapi"] == "3.1.0"


def test_the_docs_page_and_its_files_are_served(anonymous_http: httpx.Client) -> None:
    page = anonymous_http.get("/docs/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "swagger-ui-bundle.js" in page.text
    redirect = anonymous_http.get("/docs")
    assert redirect.status_code == 301
    assert redirect.headers["location"].endswith("/docs/")
    sums = {}
    for line in (paths.docs_dir() / "swagger-ui" / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[name] = digest
    for name, media in (
        ("swagger-ui-bundle.js", "text/javascript"),
        ("swagger-ui.css", "text/css"),
    ):
        served = anonymous_http.get(f"/docs/{name}")
        assert served.status_code == 200
        assert served.headers["content-type"].startswith(media)
        assert served.headers["x-content-type-options"] == "nosniff"
        # Swagger UI as the npm package ships it (the sums `make vendor-docs-ui` wrote).
        assert hashlib.sha256(served.content).hexdigest() == sums[name]


def test_make_dev_prints_the_docs_page(stack: DevStack, envoy_url: str) -> None:
    assert f"{envoy_url}/docs/" in _banner(stack)


def test_a_method_a_json_path_does_not_take_is_405_with_allow(http: httpx.Client) -> None:
    response = http.put("/v1/agents")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    assert response.json()["code"] == 12  # UNIMPLEMENTED, in the Status body every error has
    response = http.delete("/v1/sessions/s-1:undelete")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    # The methods it takes still reach the service.
    assert http.get("/v1/agents").status_code == 200


def test_a_cors_preflight_on_a_json_path_is_still_answered(anonymous_http: httpx.Client) -> None:
    response = anonymous_http.options(
        "/v1/sessions",
        headers={
            "origin": "https://app.example.com",
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )
    assert response.status_code == 200
    assert "POST" in response.headers["access-control-allow-methods"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: make browser-tools installs it"
    with sync_playwright() as driver:
        # As root in a container the sandbox cannot start; the page is our own.
        launched = driver.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox"]
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    try:
        opened = context.new_page()
        opened.set_default_timeout(UI_TIMEOUT_MS)
        yield opened
    finally:
        context.close()


def test_the_docs_page_lists_every_operation(page: Page, envoy_url: str) -> None:
    spec = httpx.get(f"{envoy_url}/openapi.json", timeout=10.0).json()
    operations = [op for item in spec["paths"].values() for op in item.values()]
    page.goto(f"{envoy_url}/docs/")
    page.wait_for_selector(".opblock")
    assert page.locator(".opblock").count() == len(operations)
    for tag in ("AgentService", "ConductorService", "JobService", "MemoryService"):
        assert page.locator(f"#operations-tag-{tag}").count() == 1
    assert page.locator("text=MemoryService_CreateSession").count() == 1


def test_try_it_out_with_a_token_reaches_the_api(page: Page, envoy_url: str, token: str) -> None:
    page.goto(f"{envoy_url}/docs/")
    page.wait_for_selector(".opblock")
    # Authorize with the bearer token, as a user pastes it.
    page.click("button.authorize")
    page.fill(".auth-container input", token)
    page.click(".auth-btn-wrapper button.authorize")
    page.click(".auth-btn-wrapper button.btn-done")
    # GET /v1/agents: Try it out, Execute.
    operation = page.locator("#operations-AgentService-AgentService_ListAgents")
    operation.locator(".opblock-summary").click()
    operation.locator("button.try-out__btn").click()
    operation.locator("button.execute").click()
    status = operation.locator(".live-responses-table .response .response-col_status")
    status.wait_for()
    assert status.first.inner_text().strip().startswith("200")
    body = operation.locator(".live-responses-table .response-col_description pre").first
    assert "agents/echo" in body.inner_text()
    # Without the token the same call is refused: the token is what reached the API.
    page.click("button.authorize")
    page.click(".auth-btn-wrapper button:has-text('Logout')")
    page.click(".auth-btn-wrapper button.btn-done")
    operation.locator("button.execute").click()
    operation.locator(".live-responses-table .response-col_status:has-text('401')").wait_for()
