"""Request ids, JSON logs and Prometheus metrics, observed from outside the processes."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentmesh.devstack.stack import DevStack
from agentmesh.v1 import agent_pb2, agent_pb2_grpc

T = TypeVar("T")


def eventually(check: Callable[[], T | None], *, timeout_s: float = 10.0) -> T:
    """Polls ``check`` until it returns something truthy (logs and metrics are async)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.1)


def _handled_ok(stack: DevStack, method: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{stack.ports.metrics_agent}/metrics", timeout=5).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "grpc_server_handled":
            continue
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "grpc_server_handled_total"
                and labels.get("grpc_method") == method
                and labels.get("grpc_service") == "agentmesh.v1.AgentService"
                and labels.get("grpc_code") == "OK"
            ):
                total += sample.value
    return total


def test_handled_total_grows_after_a_call(stack: DevStack, http: httpx.Client) -> None:
    before = _handled_ok(stack, "ListAgents")
    for _ in range(3):
        assert http.get("/v1/agents").status_code == 200
    eventually(lambda: _handled_ok(stack, "ListAgents") >= before + 3)


def test_request_id_is_echoed_in_trailers(
    stack: DevStack, auth_metadata: tuple[tuple[str, str], ...]
) -> None:
    request_id = f"e2e-{uuid.uuid4()}"
    with grpc.insecure_channel(stack.endpoints["agent"]) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        _, call = stub.GetAgent.with_call(
            agent_pb2.GetAgentRequest(name="agents/echo"),
            metadata=(*auth_metadata, ("x-request-id", request_id)),
            timeout=10,
        )
    assert ("x-request-id", request_id) in tuple(call.trailing_metadata() or ())


def test_request_id_generated_when_absent(http: httpx.Client) -> None:
    response = http.get("/v1/agents/echo")
    assert response.status_code == 200
    # Envoy forwards upstream trailers as headers for HTTP/1.1 JSON clients.
    assert response.headers.get("x-request-id"), response.headers


def test_log_line_is_json_with_the_client_request_id(
    stack: DevStack, auth_metadata: tuple[tuple[str, str], ...]
) -> None:
    request_id = f"e2e-log-{uuid.uuid4()}"
    with grpc.insecure_channel(stack.endpoints["envoy"]) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        with pytest.raises(grpc.RpcError):  # a NOT_FOUND is logged at info level
            stub.GetAgent(
                agent_pb2.GetAgentRequest(name="agents/missing-agent"),
                metadata=(*auth_metadata, ("x-request-id", request_id)),
                timeout=10,
            )
    log_path = stack.logs_dir / "agent.log"

    def find() -> dict[str, object] | None:
        for line in log_path.read_text(errors="replace").splitlines():
            if request_id in line:
                record: dict[str, object] = json.loads(line)  # the whole line is JSON
                return record
        return None

    record = eventually(find)
    assert record["request_id"] == request_id
    assert record["tenant"] == "acme"
    assert record["service"] == "agent"
    assert {"timestamp", "level", "event"} <= record.keys()
