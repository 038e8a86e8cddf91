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


# -- Envoy's access log: the service's gRPC status, also for transcoded JSON calls ------

NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]

#: case → (method, REST path, JSON body or None, HTTP status, gRPC status in body and log)
JSON_CALLS: dict[str, tuple[str, str, bytes | None, int, int]] = {
    # The service answers NOT_FOUND; the transcoder alone would log 12 (from HTTP 404).
    "not found": ("GET", "/v1/agents/no-such-agent", None, 404, NOT_FOUND),
    # The service answers INVALID_ARGUMENT; the transcoder alone would log 13 (HTTP 400).
    "invalid argument": ("GET", "/v1/agents?filter=not%20a%20filter", None, 400, INVALID_ARGUMENT),
    # Envoy refuses the body itself (a local reply): the code of its JSON body.
    "malformed body": ("POST", "/v1/sessions", b'{"title": ', 400, INVALID_ARGUMENT),
    "ok": ("GET", "/v1/agents/echo", None, 200, 0),
}


@pytest.fixture(scope="module")
def access_log(
    stack: DevStack, http: httpx.Client, auth_metadata: tuple[tuple[str, str], ...]
) -> dict[str, dict[str, object]]:
    """Makes the JSON calls above and two native gRPC calls, each with its own request id,
    and returns each call's Envoy access-log line (external listener) by case name."""
    cases = [*JSON_CALLS, "grpc ok", "grpc not found"]
    ids = {case: f"e2e-access-{uuid.uuid4()}" for case in cases}
    for case, (method, path, body, status, code) in JSON_CALLS.items():
        response = http.request(
            method,
            path,
            content=body,
            headers={"x-request-id": ids[case], "content-type": "application/json"},
        )
        assert response.status_code == status, response.text
        # What the client got, to compare the log with.
        assert int(response.headers["grpc-status"]) == code, response.headers
        if status != 200:
            assert response.json()["code"] == code
    with grpc.insecure_channel(stack.endpoints["envoy"]) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        _, call = stub.GetAgent.with_call(
            agent_pb2.GetAgentRequest(name="agents/echo"),
            metadata=(*auth_metadata, ("x-request-id", ids["grpc ok"])),
            timeout=10,
        )
        # A native success carries its status in the trailers only: a grpc-status in the
        # initial headers would end the call for a gRPC client.
        assert "grpc-status" not in dict(call.initial_metadata() or ())
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetAgent(
                agent_pb2.GetAgentRequest(name="agents/no-such-agent"),
                metadata=(*auth_metadata, ("x-request-id", ids["grpc not found"])),
                timeout=10,
            )
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND

    log_path = stack.logs_dir / "envoy.log"

    def lines() -> dict[str, dict[str, object]] | None:
        found: dict[str, dict[str, object]] = {}
        by_id = {request_id: case for case, request_id in ids.items()}
        for line in log_path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue  # Envoy's own log lines and the launcher's banner
            record: dict[str, object] = json.loads(line)
            case = by_id.get(str(record.get("request_id")))
            if case is not None and record.get("listener") == "external":
                found[case] = record
        return found if len(found) == len(ids) else None

    # Envoy flushes its access log every few seconds.
    return eventually(lines, timeout_s=60.0)


@pytest.mark.parametrize("case", list(JSON_CALLS))
def test_access_log_has_the_grpc_status_of_a_json_call(
    access_log: dict[str, dict[str, object]], case: str
) -> None:
    _, path, _, status, code = JSON_CALLS[case]
    record = access_log[case]
    assert record["path"] == path
    assert record["status"] == status
    assert record["grpc_status"] == code, record
    assert str(record["grpc_path"]).startswith("/agentmesh.v1."), record


def test_access_log_has_the_grpc_status_of_a_native_call(
    access_log: dict[str, dict[str, object]],
) -> None:
    assert access_log["grpc ok"]["grpc_status"] == 0
    assert access_log["grpc not found"]["grpc_status"] == NOT_FOUND
    assert access_log["grpc not found"]["status"] == 200  # gRPC: HTTP 200, status in trailers
