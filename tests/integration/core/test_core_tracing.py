"""Server spans made by our interceptor: parent from ``traceparent``, RPC attributes,
error status only for server-side codes, no spans for health checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from agentmesh.core.auth import Authenticator, mint_token
from agentmesh.core.context import current_trace_id
from agentmesh.core.errors import InvalidArgument
from agentmesh.core.interceptors import ServerInterceptor

pytestmark = pytest.mark.integration

SECRET = "tracing-test-secret-of-at-least-32-bytes"
SERVICE = "agentmesh.test.Traced"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
AUTH = (("authorization", f"Bearer {mint_token(SECRET, 'acme')}"),)


async def _ok(request: bytes, context: Any) -> bytes:
    return (current_trace_id() or "").encode()


async def _invalid(request: bytes, context: Any) -> bytes:
    raise InvalidArgument("name", "bad")


async def _crash(request: bytes, context: Any) -> bytes:
    raise RuntimeError("boom")


def _handler(behavior: Any) -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.unary_unary_rpc_method_handler(behavior)


@pytest.fixture
async def traced() -> AsyncIterator[tuple[grpc.aio.Channel, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    authenticator = Authenticator(hs256_secret=SECRET)
    server = grpc.aio.server(
        interceptors=[ServerInterceptor(authenticator, tracer=provider.get_tracer("test"))]
    )
    handlers = {"Ok": _handler(_ok), "Invalid": _handler(_invalid), "Crash": _handler(_crash)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, exporter
    finally:
        await server.stop(0)


async def _call(channel: grpc.aio.Channel, method: str, metadata: Any = AUTH) -> bytes:
    call = channel.unary_unary(f"/{SERVICE}/{method}", None, None)
    response: bytes = await call(b"", metadata=metadata, timeout=5)
    return response


def _only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = exporter.get_finished_spans()
    return span


async def test_span_continues_the_callers_trace(
    traced: tuple[grpc.aio.Channel, InMemorySpanExporter],
) -> None:
    channel, exporter = traced
    traceparent = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"
    seen = await _call(channel, "Ok", (*AUTH, ("traceparent", traceparent)))
    assert seen.decode() == TRACE_ID  # the handler (and its logs) see the trace
    span = _only_span(exporter)
    assert span.name == f"{SERVICE}/Ok"
    assert span.kind is SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == PARENT_SPAN_ID
    assert dict(span.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": "Ok",
        "rpc.grpc.status_code": 0,
    }
    assert span.status.status_code is StatusCode.UNSET


async def test_without_traceparent_a_new_trace_starts(
    traced: tuple[grpc.aio.Channel, InMemorySpanExporter],
) -> None:
    channel, exporter = traced
    seen = await _call(channel, "Ok")
    span = _only_span(exporter)
    assert span.parent is None
    assert seen.decode() == format(span.context.trace_id, "032x")


async def test_client_errors_leave_status_unset_server_errors_mark_it(
    traced: tuple[grpc.aio.Channel, InMemorySpanExporter],
) -> None:
    channel, exporter = traced
    with pytest.raises(grpc.aio.AioRpcError):
        await _call(channel, "Invalid")
    with pytest.raises(grpc.aio.AioRpcError):
        await _call(channel, "Crash")
    with pytest.raises(grpc.aio.AioRpcError):
        await _call(channel, "Ok", metadata=())  # no token: refused, still traced
    invalid, crash, refused = exporter.get_finished_spans()
    assert (invalid.attributes or {})["rpc.grpc.status_code"] == 3
    assert invalid.status.status_code is StatusCode.UNSET
    assert (crash.attributes or {})["rpc.grpc.status_code"] == 13
    assert crash.status.status_code is StatusCode.ERROR
    assert any(event.name == "exception" for event in crash.events)
    assert (refused.attributes or {})["rpc.grpc.status_code"] == 16


async def test_health_checks_are_not_traced(
    traced: tuple[grpc.aio.Channel, InMemorySpanExporter],
) -> None:
    channel, exporter = traced
    stub = health_pb2_grpc.HealthStub(channel)
    await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert exporter.get_finished_spans() == ()
