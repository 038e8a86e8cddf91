"""Every dashboard query and every rule, evaluated by a real Prometheus scraping the mesh.

A Prometheus (Debian's binary, `make obs-tools`) starts on a free loopback port with a
temporary data dir, scrapes every service's and the worker's `/metrics` and Envoy's
`/stats/prometheus` every second, and loads observability/rules. Traffic goes through
Envoy (JSON and native gRPC: a session, agents listed and run, a memory written and
searched, texts embedded, a job run to its end), twice; then each panel query of
observability/dashboards and each rule expression goes through `/api/v1/query`. All must
succeed; those the traffic must feed must return series. Run with `-s` to see the table
of queries and series counts.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml

from agentmesh.devstack.stack import SERVICES, WORKER, DevStack
from agentmesh.observability.dashboards import panel_queries
from agentmesh.observability.panels import RATE_WINDOW
from agentmesh.v1 import agent_pb2, agent_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "observability" / "dashboards"
RULES = ROOT / "observability" / "rules"
SCRAPE_S = 1
DEADLINE_S = 60.0
#: What Grafana's `$__rate_interval` becomes here (several 1 s scrapes).
WINDOW = "30s"

#: Metrics that stay without series until something rare happens (a budget refusal, a
#: model call, a lost worker, a retry): queries over them may come back empty.
RARE_METRICS = (
    "agentmesh_agent_budget_refusals_total",
    "agentmesh_llm_tokens_total",
    "agentmesh_llm_cache_lookups_total",
    "agentmesh_job_lease_expiries_total",
    "agentmesh_job_retries_total",
)

Json = dict[str, Any]


@dataclass
class Evaluated:
    source: str
    name: str
    expr: str
    series: int


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _scrape_config(stack: DevStack) -> list[Json]:
    jobs: list[Json] = [
        {
            "job_name": f"agentmesh-{name}",
            "static_configs": [{"targets": [f"127.0.0.1:{stack.ports.metrics_port(name)}"]}],
        }
        for name in [*SERVICES, WORKER]
    ]
    jobs.append(
        {
            "job_name": "agentmesh-envoy",
            "metrics_path": "/stats/prometheus",
            "static_configs": [{"targets": [f"127.0.0.1:{stack.ports.envoy_admin}"]}],
        }
    )
    return jobs


@pytest.fixture(scope="module")
def prometheus(stack: DevStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prometheus scraping the session's mesh every second; stopped by its PID."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: run `make obs-tools` (Debian's prometheus package)"
    home = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {
            "scrape_interval": f"{SCRAPE_S}s",
            "scrape_timeout": f"{SCRAPE_S}s",
            "evaluation_interval": f"{SCRAPE_S}s",
        },
        "rule_files": [str(path) for path in sorted(RULES.glob("*.yml"))],
        "scrape_configs": _scrape_config(stack),
    }
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    log = (home / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20.0
        while True:
            assert process.poll() is None, (home / "prometheus.log").read_text()
            try:
                if httpx.get(f"{url}/-/ready", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "Prometheus not ready within 20 s"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()


def _query(prometheus: str, expr: str) -> list[Json]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10.0)
    body = response.json()
    assert response.status_code == 200, (expr, body)
    assert body["status"] == "success", (expr, body)
    result: list[Json] = body["data"]["result"]
    return result


def _wait_for(prometheus: str, expr: str, count: int, deadline: float) -> None:
    while len(_query(prometheus, expr)) < count:
        assert time.monotonic() < deadline, f"{expr!r}: fewer than {count} series in time"
        time.sleep(0.25)


def _traffic(http: httpx.Client, envoy_channel: grpc.Channel, token: str) -> None:
    """A bit of everything the dashboards show, through Envoy."""
    tag = uuid.uuid4().hex[:8]
    assert http.post("/v1/sessions", params={"sessionId": f"obs-{tag}"}, json={}).is_success
    assert http.get("/v1/agents").status_code == 200
    assert http.get("/v1/agents/missing").status_code == 404
    invoked = http.post("/v1/agents/echo:invoke", json={"parts": [{"text": "hello"}]})
    assert invoked.json()["result"]["status"] == "RUN_STATUS_COMPLETED", invoked.text
    memory = {"namespace": f"users/{tag}/facts", "content": "Loves green curry"}
    assert http.post("/v1/memories", json=memory).is_success
    found = http.post("/v1/memories:search", json={"text": "curry", "namespacePrefix": "users"})
    assert found.status_code == 200, found.text
    assert http.post("/v1/memories:embedTexts", json={"texts": ["a", "b"]}).is_success
    stub = agent_pb2_grpc.AgentServiceStub(envoy_channel)
    listed = stub.ListAgents(
        agent_pb2.ListAgentsRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=10
    )
    assert listed.agents
    job = {"agent": "agents/echo", "parts": [{"text": "observe me"}]}
    created = http.post("/v1/jobs", params={"jobId": f"obs-{tag}"}, json=job)
    assert created.is_success, created.text
    deadline = time.monotonic() + 30.0
    while http.get(f"/v1/jobs/obs-{tag}").json()["state"] != "JOB_STATE_SUCCEEDED":
        assert time.monotonic() < deadline, "the job did not succeed within 30 s"
        time.sleep(0.2)


def _rule_exprs() -> list[tuple[str, str, bool]]:
    """(name, expr, must have data) of every rule: recordings must, alerts need not."""
    rules = []
    for path in sorted(RULES.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("record") or rule["alert"]
                rules.append((name, rule["expr"], "record" in rule))
    return rules


def test_every_dashboard_query_and_rule_evaluates_against_the_mesh(
    stack: DevStack,
    prometheus: str,
    http: httpx.Client,
    envoy_channel: grpc.Channel,
    token: str,
) -> None:
    deadline = time.monotonic() + DEADLINE_S
    targets = len(SERVICES) + 2  # the worker and Envoy
    _wait_for(prometheus, 'up{job=~"agentmesh-.+"} == 1', targets, deadline)
    # Twice: a labelled counter has no series before its first increment, and a series
    # that appears at 1 shows no increase, so rates move only with the second round.
    _traffic(http, envoy_channel, token)
    _wait_for(prometheus, 'agentmesh_job_finished_total{state="succeeded"}', 1, deadline)
    time.sleep(2 * SCRAPE_S)
    _traffic(http, envoy_channel, token)
    # Memory, Agent and Job served calls (Conductor none): their rates, recorded by the
    # rules from two scrapes at least, are above 0.
    _wait_for(prometheus, "grpc_service:grpc_server_handled:rate5m > 0", 3, deadline)
    _wait_for(
        prometheus, 'rate(agentmesh_job_finished_total{state="succeeded"}[30s]) > 0', 1, deadline
    )

    evaluated: list[Evaluated] = []
    empty_but_required: list[Evaluated] = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for title, expr in panel_queries(json.loads(path.read_text())):
            result = _query(prometheus, expr.replace(RATE_WINDOW, WINDOW))
            item = Evaluated(path.stem, title, expr, len(result))
            evaluated.append(item)
            if not result and not any(metric in expr for metric in RARE_METRICS):
                empty_but_required.append(item)
    for name, expr, required in _rule_exprs():
        result = _query(prometheus, expr)
        item = Evaluated("rules", name, expr, len(result))
        evaluated.append(item)
        if required and not result:
            empty_but_required.append(item)

    print(f"\n{'source':<16} {'series':>6}  query")
    for item in evaluated:
        print(f"{item.source:<16} {item.series:>6}  {item.name}: {' '.join(item.expr.split())}")
    assert len(evaluated) >= 80
    assert empty_but_required == []

    # The server's own evaluation of the rules: every one healthy, none with an error.
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10.0).json()["data"]["groups"]
    loaded = [rule for group in groups for rule in group["rules"]]
    assert len(loaded) == len(_rule_exprs())
    unhealthy = [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"]
    assert unhealthy == []
