"""Fixtures shared by every tier, and the guards that keep the suite honest.

The mesh is started once per test session with the same launcher `make dev` uses
(`agentmesh.devstack.DevStack`), on free loopback ports, in a temporary directory.
Missing infrastructure fails the run: nothing is ever skipped.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from agentmesh.core.auth import mint_token
from agentmesh.devstack.stack import DevStack, StackPorts

TENANT = "acme"

_TIERS = ("unit", "integration", "component", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks each test with its tier, taken from its folder (tests/<tier>/...)."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in _TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))
                break


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skipped test is a test that did not run: fail the session instead of passing."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if skipped and exitstatus == 0 and reporter is not None:
        reporter.write_line(f"{skipped} test(s) skipped: the suite must run everything", red=True)
        session.exitstatus = 1


@pytest.fixture(scope="session")
def stack_root() -> Iterator[Path]:
    """State directory of the session's mesh, outside pytest's basetemp.

    As root, PostgreSQL runs as another OS user that must traverse every parent of
    its data dir; pytest resets /tmp/pytest-of-<user> to 0700 when any pytest
    session starts, so a data dir under it can become unreachable mid-run.
    """
    root = Path(tempfile.mkdtemp(prefix="agentmesh-e2e-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def stack(stack_root: Path) -> Iterator[DevStack]:
    """The whole mesh (PostgreSQL, Redis, Envoy, four services, a worker), once per session."""
    mesh = DevStack(stack_root, StackPorts.free(), ready_timeout_s=60.0)
    mesh.start()
    try:
        yield mesh
    finally:
        mesh.stop()


@pytest.fixture(scope="session")
def token(stack: DevStack) -> str:
    """A valid bearer token for tenant ``acme``."""
    return mint_token(stack.secret, TENANT, subject="tester")


@pytest.fixture(scope="session")
def auth_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying the token."""
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="session")
def envoy_url(stack: DevStack) -> str:
    """Base URL of Envoy's external listener (HTTP/JSON and gRPC)."""
    return f"http://{stack.endpoints['envoy']}"


@pytest.fixture(scope="session")
def http(envoy_url: str, token: str) -> Iterator[httpx.Client]:
    """An HTTP/1.1 JSON client of Envoy's external listener, authenticated."""
    with httpx.Client(
        base_url=envoy_url, headers={"authorization": f"Bearer {token}"}, timeout=10.0
    ) as client:
        yield client


@pytest.fixture(scope="session")
def anonymous_http(envoy_url: str) -> Iterator[httpx.Client]:
    """An HTTP/1.1 JSON client of Envoy's external listener without credentials."""
    with httpx.Client(base_url=envoy_url, timeout=10.0) as client:
        yield client


@pytest.fixture(scope="session")
def envoy_channel(stack: DevStack) -> Iterator[grpc.Channel]:
    """A native gRPC channel to Envoy's external listener."""
    with grpc.insecure_channel(stack.endpoints["envoy"]) as channel:
        yield channel
