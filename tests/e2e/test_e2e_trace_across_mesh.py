"""One trace from a client's call to the worker's run, received over the real OTLP protocol.

A mesh of its own exports to a local OTLP/gRPC receiver (the collector protocol's own
generated service): Envoy's spans (both listeners), the services' server and client
spans, their PostgreSQL and Redis spans, and the worker's run of the job. A JSON call
through Envoy that carries the client's `traceparent` must end up as one tree under the
client's span.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from agentmesh.core.auth import mint_token
from agentmesh.devstack.stack import DevStack, StackPorts

WAIT_S = 60.0


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()

    def Export(  # noqa: N802 (the protocol's method name)
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            service = next(
                (
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                ),
                "",
            )
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {a.key: _value(a.value) for a in span.attributes}
                    received.append(
                        ReceivedSpan(
                            service,
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            attributes,
                        )
                    )
        with self._lock:
            self.spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, int]]:
    servicer = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(grace=None)


@pytest.fixture(scope="module")
def traced_stack(receiver: tuple[Receiver, int]) -> Iterator[DevStack]:
    _, port = receiver
    root = Path(tempfile.mkdtemp(prefix="agentmesh-trace-"))
    mesh = DevStack(
        root,
        StackPorts.free(),
        ready_timeout_s=60.0,
        extra_env={
            "AGENTMESH_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            # Export within a fraction of a second instead of the SDK's 5 s batches.
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        },
    )
    mesh.start()
    try:
        yield mesh
    finally:
        mesh.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_a_job_created_over_json_is_one_trace_from_the_client_to_the_worker(
    traced_stack: DevStack, receiver: tuple[Receiver, int]
) -> None:
    spans_of, _ = receiver
    trace_id = uuid.uuid4().hex
    client_span = uuid.uuid4().hex[:16]
    token = mint_token(traced_stack.secret, "tracing", subject="tester")
    headers = {
        "authorization": f"Bearer {token}",
        "traceparent": f"00-{trace_id}-{client_span}-01",
    }
    base = f"http://{traced_stack.endpoints['envoy']}"
    with httpx.Client(base_url=base, timeout=30.0) as http:
        created = http.post(
            "/v1/jobs", headers=headers, json={"agent": "agents/echo", "parts": [{"text": "hi"}]}
        )
        assert created.status_code == 200, created.text
        name = created.json()["name"]
        # Followed in another trace, so the tree under the client's span is the create's.
        watch = {"authorization": headers["authorization"]}
        deadline = time.monotonic() + WAIT_S
        state = ""
        while time.monotonic() < deadline:
            state = http.get(f"/v1/{name}", headers=watch).json()["state"]
            if state == "JOB_STATE_SUCCEEDED":
                break
            time.sleep(0.2)
        assert state == "JOB_STATE_SUCCEEDED", traced_stack.log_tail("worker")

    # Every hop must have exported its part: wait for the last (the worker's run and
    # the Agent service it called), bounded.
    def services() -> set[str]:
        return {s.service for s in spans_of.of_trace(trace_id)}

    def orphans(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        """Spans whose parent is neither the client's span nor a span received."""
        ids = {s.span_id for s in spans}
        return [s for s in spans if s.parent_id not in ids and s.parent_id != client_span]

    # A parent ends (and is exported) after its children: wait until every hop has
    # exported and no span waits for its parent, bounded.
    wanted = {"agentmesh-envoy", "agentmesh-job", "agentmesh-worker", "agentmesh-agent"}
    deadline = time.monotonic() + WAIT_S
    spans = spans_of.of_trace(trace_id)
    while time.monotonic() < deadline and (not wanted <= services() or orphans(spans)):
        time.sleep(0.5)
        spans = spans_of.of_trace(trace_id)
    assert wanted <= services(), sorted((s.service, s.name) for s in spans)
    # One tree: every span's parent is the client's span or another span of the trace.
    assert not orphans(spans), [(s.service, s.name, s.parent_id) for s in orphans(spans)]
    by_id = {s.span_id: s for s in spans}
    print("spans of the trace by service:", sorted(Counter(s.service for s in spans).items()))
    roots = [s for s in spans if s.parent_id == client_span]
    assert [(r.service, r.attributes.get("agentmesh.listener")) for r in roots] == [
        ("agentmesh-envoy", "external")
    ], roots

    def chain(span: ReceivedSpan) -> list[str]:
        """Services from the client's span down to this one."""
        out = [span.service]
        while span.parent_id in by_id:
            span = by_id[span.parent_id]
            out.append(span.service)
        return list(reversed(out))

    # The Job service's handling, under Envoy's span; its statements and its broker
    # command under it.
    (create,) = [s for s in spans if s.name == "agentmesh.v1.JobService/CreateJob"]
    assert chain(create) == ["agentmesh-envoy", "agentmesh-job"]
    databases = [s for s in spans if s.attributes.get("db.system") == "postgresql"]
    redis_calls = [s for s in spans if s.attributes.get("db.system") == "redis"]
    assert any(chain(s)[:2] == ["agentmesh-envoy", "agentmesh-job"] for s in databases)
    assert any(chain(s)[:2] == ["agentmesh-envoy", "agentmesh-job"] for s in redis_calls)
    # The worker's run continues the trace from the Dramatiq message, and the Agent
    # service's run of the agent sits under it, through Envoy's internal listener.
    agent_runs = [s for s in spans if s.service == "agentmesh-agent"]
    assert any(
        "agentmesh-worker" in chain(s) and chain(s)[-2:] == ["agentmesh-envoy", "agentmesh-agent"]
        for s in agent_runs
    ), [chain(s) for s in agent_runs]
    assert any(
        s.service == "agentmesh-worker" and s.attributes.get("db.system") == "postgresql"
        for s in spans
    )
