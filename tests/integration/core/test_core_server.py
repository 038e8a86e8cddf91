"""The shared grpc.aio server, exercised over a real channel on 127.0.0.1.

A tiny servicer registered through generic handlers (raw bytes, no protos) stands in
for a service; everything else is the production code path: ``start_server`` with the
OpenTelemetry and agentmesh interceptors, health, reflection, metrics and logs.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from jwt.algorithms import RSAAlgorithm
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from agentmesh.core.auth import mint_token
from agentmesh.core.channels import open_channel
from agentmesh.core.context import current_call, current_tenant
from agentmesh.core.errors import NotFound
from agentmesh.core.logging import configure_logging
from agentmesh.core.server import LIVENESS, RunningServer, ServiceSpec, start_server
from agentmesh.core.settings import ConfigError, Settings
from agentmesh.core.tracing import configure_tracing

pytestmark = pytest.mark.integration

SERVICE = "test.v1.Probe"
SECRET = "integration-test-secret-at-least-32-bytes"
GOOD_TOKEN = mint_token(SECRET, "acme", "alice")
AUTH = (("authorization", f"Bearer {GOOD_TOKEN}"),)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    """Poll ``check`` until it holds, instead of sleeping a guessed time."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


@dataclass
class ProbeServicer:
    """Handlers covering each call type and each way a handler can end."""

    hop_target: str = ""
    settings: Settings | None = None
    flaky_failures_left: int = 0
    slow_started: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a ``Slow`` call has reached its handler."""

    async def whoami(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        call = current_call()
        assert call is not None
        return json.dumps(
            {
                "tenant": current_tenant(),
                "subject": call.subject,
                "request_id": call.request_id,
                "has_deadline": context.time_remaining() is not None,
            }
        ).encode()

    async def fail(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        raise NotFound("test.v1.Widget", "widgets/1")

    async def crash(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        raise RuntimeError("database password is hunter2")

    async def set_code(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
        context.set_details("bad input")
        return b""

    async def set_code_then_crash(
        self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
        context.set_details("not ready")
        raise ValueError("half-way")

    async def abort(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not yours")
        raise AssertionError("unreachable")

    async def count(
        self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        for i in range(int(request)):
            yield f"{current_tenant()}:{i}".encode()

    async def count_writer(
        self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        for i in range(int(request)):
            await context.write(f"{current_tenant()}:{i}".encode())

    async def count_then_fail(
        self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        yield b"first"
        raise NotFound("test.v1.Widget", "widgets/2")

    async def total(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        return str(sum([int(r) async for r in requests])).encode()

    async def echo(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        async for request in requests:
            yield current_tenant().encode() + b":" + request

    async def hop(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        """Call Whoami on ourselves through a core channel, as a service calls another."""
        assert self.settings is not None
        async with open_channel(self.hop_target, self.settings) as channel:
            response: bytes = await channel.unary_unary(f"/{SERVICE}/Whoami", None, None)(request)
        return response

    async def hop_streams(
        self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        """Call a server stream, a client stream and a bidi stream on ourselves through
        a core channel, passing no metadata: the channel forwards the caller's."""
        assert self.settings is not None

        async def two() -> AsyncIterator[bytes]:
            for item in (b"1", b"2"):
                yield item

        async with open_channel(self.hop_target, self.settings) as channel:
            counted = [r async for r in channel.unary_stream(f"/{SERVICE}/Count", None, None)(b"2")]
            total = await channel.stream_unary(f"/{SERVICE}/Total", None, None)(two())
            echoed = [r async for r in channel.stream_stream(f"/{SERVICE}/Echo", None, None)(two())]
        return json.dumps(
            {
                "count": [r.decode() for r in counted],
                "total": total.decode(),
                "echo": [r.decode() for r in echoed],
            }
        ).encode()

    async def flaky(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        """UNAVAILABLE while ``flaky_failures_left`` lasts, as a replica going away would."""
        if self.flaky_failures_left > 0:
            self.flaky_failures_left -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "replica restarting")
        return b"ok"

    async def slow(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        self.slow_started.set()
        await asyncio.sleep(float(request))
        return b"done"

    def register(self, server: grpc.aio.Server) -> None:
        handlers = {
            "Whoami": grpc.unary_unary_rpc_method_handler(self.whoami),
            "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
            "Crash": grpc.unary_unary_rpc_method_handler(self.crash),
            "SetCode": grpc.unary_unary_rpc_method_handler(self.set_code),
            "SetCodeThenCrash": grpc.unary_unary_rpc_method_handler(self.set_code_then_crash),
            "Abort": grpc.unary_unary_rpc_method_handler(self.abort),
            "Count": grpc.unary_stream_rpc_method_handler(self.count),
            "CountWriter": grpc.unary_stream_rpc_method_handler(self.count_writer),
            "CountThenFail": grpc.unary_stream_rpc_method_handler(self.count_then_fail),
            "Total": grpc.stream_unary_rpc_method_handler(self.total),
            "Echo": grpc.stream_stream_rpc_method_handler(self.echo),
            "Hop": grpc.unary_unary_rpc_method_handler(self.hop),
            "HopStreams": grpc.unary_unary_rpc_method_handler(self.hop_streams),
            "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
            "Flaky": grpc.unary_unary_rpc_method_handler(self.flaky),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


@dataclass
class Harness:
    server: RunningServer
    servicer: ProbeServicer
    channel: grpc.aio.Channel
    logs: io.StringIO
    faults: dict[str, bool] = field(default_factory=lambda: {"down": False, "hangs": False})

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.logs.getvalue().splitlines() if line]

    async def unary(
        self, method: str, request: bytes = b"", metadata: tuple[tuple[str, str], ...] = AUTH
    ) -> tuple[bytes, grpc.aio.UnaryUnaryCall[Any, Any]]:
        call = self.channel.unary_unary(f"/{SERVICE}/{method}", None, None)(
            request, metadata=metadata
        )
        response: bytes = await call
        return response, call


def settings_for_test(**overrides: str) -> Settings:
    environ = {
        "AGENTMESH_GRPC_PORT": "0",
        "AGENTMESH_METRICS_PORT": "0",
        "AGENTMESH_AUTH_HS256_SECRET": SECRET,
        "AGENTMESH_LOG_LEVEL": "debug",
        "AGENTMESH_HEALTH_INTERVAL_S": "0.05",
        "AGENTMESH_HEALTH_PROBE_TIMEOUT_S": "0.5",
        **{f"AGENTMESH_{key.upper()}": value for key, value in overrides.items()},
    }
    return Settings.from_env(environ, service="memory")


@pytest.fixture(scope="module")
async def harness() -> AsyncIterator[Harness]:
    settings = settings_for_test(metrics_port=str(free_port()))
    logs = io.StringIO()
    configure_logging(settings, stream=logs)
    configure_tracing(settings)
    servicer = ProbeServicer(settings=settings)
    faults = {"down": False, "hangs": False}

    async def probe() -> None:
        if faults["down"]:
            raise ConnectionError("database unreachable")
        if faults["hangs"]:
            await asyncio.sleep(3600)  # a dependency that accepts but never answers

    running = await start_server(
        settings,
        ServiceSpec(
            name="memory", service_names=[SERVICE], register=servicer.register, probes=[probe]
        ),
    )
    servicer.hop_target = f"127.0.0.1:{running.port}"
    channel = grpc.aio.insecure_channel(servicer.hop_target)
    try:
        yield Harness(server=running, servicer=servicer, channel=channel, logs=logs, faults=faults)
    finally:
        await channel.close(None)
        await running.stop(grace_s=1)


def rich_status(error: grpc.aio.AioRpcError) -> tuple[Any, dict[str, Any]]:
    """The ``google.rpc.Status`` of a failed call and its details by type name."""
    trailers = metadata_dict(error.trailing_metadata())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert status.code == error.code().value[0]
    assert status.message == error.details()
    details: dict[str, Any] = {}
    for packed in status.details:
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.RequestInfo,
            error_details_pb2.ResourceInfo,
        ):
            if packed.TypeName() == kind.DESCRIPTOR.full_name:
                details[kind.__name__] = kind()
                packed.Unpack(details[kind.__name__])
    return status, details


def metadata_dict(metadata: Any) -> dict[str, Any]:
    """Metadata as a dict; grpc gives tuples of pairs or ``grpc.aio.Metadata``."""
    return dict(metadata or ())


def trailer(metadata: Any, key: str) -> Any:
    return metadata_dict(metadata).get(key)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_server_binds_a_free_port(harness: Harness) -> None:
    assert harness.server.port > 0
    assert harness.server.metrics_port is not None


async def test_call_without_token_is_unauthenticated(harness: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await harness.unary("Whoami", metadata=())

    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED
    _, details = rich_status(raised.value)
    assert details["ErrorInfo"].reason == "MISSING_TOKEN"
    assert details["ErrorInfo"].domain == "agentmesh.dev"


async def test_token_with_wrong_signature_is_refused(harness: Harness) -> None:
    forged = mint_token("some-other-secret-that-is-32-bytes-long", "acme")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await harness.unary("Whoami", metadata=(("authorization", f"Bearer {forged}"),))

    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert raised.value.details() == "bearer token signature is invalid"
    assert rich_status(raised.value)[1]["ErrorInfo"].reason == "BAD_SIGNATURE"


@pytest.mark.parametrize("second_tenant", ["acme", "other"])
async def test_two_authorization_headers_are_refused(harness: Harness, second_tenant: str) -> None:
    # Whichever a proxy in front checked, the service must not pick the other one.
    first = f"Bearer {mint_token(SECRET, 'acme')}"
    second = f"Bearer {mint_token(SECRET, second_tenant)}"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await harness.unary(
            "Whoami", metadata=(("authorization", first), ("authorization", second))
        )

    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert rich_status(raised.value)[1]["ErrorInfo"].reason == "DUPLICATE_AUTHORIZATION"


async def test_good_token_makes_the_tenant_visible_to_the_handler(harness: Harness) -> None:
    response, _ = await harness.unary("Whoami")

    identity = json.loads(response)
    assert identity["tenant"] == "acme"
    assert identity["subject"] == "alice"


async def test_request_id_is_echoed_in_trailing_metadata(harness: Harness) -> None:
    metadata = (*AUTH, ("x-request-id", "req-echo-1"))

    response, call = await harness.unary("Whoami", metadata=metadata)

    assert json.loads(response)["request_id"] == "req-echo-1"
    assert trailer(await call.trailing_metadata(), "x-request-id") == "req-echo-1"


async def test_request_id_is_generated_when_absent_or_unsafe(harness: Harness) -> None:
    _, plain = await harness.unary("Whoami")
    _, spaced = await harness.unary("Whoami", metadata=(*AUTH, ("x-request-id", "a b")))
    _, huge = await harness.unary("Whoami", metadata=(*AUTH, ("x-request-id", "x" * 200)))

    for call in (plain, spaced, huge):
        generated = trailer(await call.trailing_metadata(), "x-request-id")
        assert isinstance(generated, str)
        assert len(generated) == 32
        int(generated, 16)


async def test_domain_error_gives_its_code_and_details(harness: Harness) -> None:
    metadata = (*AUTH, ("x-request-id", "req-notfound"))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await harness.unary("Fail", metadata=metadata)

    error = raised.value
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert error.details() == "test.v1.Widget 'widgets/1' not found"
    _, details = rich_status(error)
    assert details["ErrorInfo"].reason == "RESOURCE_NOT_FOUND"
    assert details["ResourceInfo"].resource_name == "widgets/1"
    assert details["RequestInfo"].request_id == "req-notfound"
    assert trailer(error.trailing_metadata(), "x-request-id") == "req-notfound"


async def test_unexpected_exception_is_internal_with_the_request_id(harness: Harness) -> None:
    metadata = (*AUTH, ("x-request-id", "req-crash"))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await harness.unary("Crash", metadata=metadata)

    error = raised.value
    assert error.code() is grpc.StatusCode.INTERNAL
    assert error.details() == "internal error (request_id=req-crash)"
    assert "hunter2" not in str(error.trailing_metadata())
    assert rich_status(error)[1]["ErrorInfo"].reason == "INTERNAL"
    # The stack trace is in the log, found by the request id from the message.
    (line,) = [entry for entry in harness.log_lines() if entry.get("request_id") == "req-crash"]
    assert line["event"] == "rpc failed"
    assert line["level"] == "error"
    assert "RuntimeError: database password is hunter2" in line["exception"]


async def test_code_set_by_the_handler_is_returned_and_counted(harness: Harness) -> None:
    labels = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "SetCode"}
    before = sample("grpc_server_handled_total", **labels, grpc_code="INVALID_ARGUMENT")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await harness.unary("SetCode")

    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "bad input"
    assert trailer(raised.value.trailing_metadata(), "x-request-id") is not None
    after = sample("grpc_server_handled_total", **labels, grpc_code="INVALID_ARGUMENT")
    assert after == before + 1


async def test_code_set_before_an_exception_is_kept(harness: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await harness.unary("SetCodeThenCrash")

    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert raised.value.details() == "not ready"
    assert trailer(raised.value.trailing_metadata(), "x-request-id") is not None


async def test_handler_abort_passes_through_and_is_counted(harness: Harness) -> None:
    labels = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "Abort"}
    before = sample("grpc_server_handled_total", **labels, grpc_code="PERMISSION_DENIED")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await harness.unary("Abort")

    assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert raised.value.details() == "not yours"
    assert trailer(raised.value.trailing_metadata(), "x-request-id") is not None
    after = sample("grpc_server_handled_total", **labels, grpc_code="PERMISSION_DENIED")
    assert after == before + 1


@pytest.mark.parametrize("method", ["Count", "CountWriter"])
async def test_server_streams_see_the_tenant(harness: Harness, method: str) -> None:
    call = harness.channel.unary_stream(f"/{SERVICE}/{method}", None, None)(b"3", metadata=AUTH)

    assert [response async for response in call] == [b"acme:0", b"acme:1", b"acme:2"]
    assert await call.code() is grpc.StatusCode.OK
    assert trailer(await call.trailing_metadata(), "x-request-id") is not None


async def test_server_stream_failing_midway_gives_its_domain_error(harness: Harness) -> None:
    call = harness.channel.unary_stream(f"/{SERVICE}/CountThenFail", None, None)(b"", metadata=AUTH)

    received = []

    async def read_all() -> None:
        async for response in call:
            received.append(response)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await read_all()

    assert received == [b"first"]
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    assert rich_status(raised.value)[1]["ResourceInfo"].resource_name == "widgets/2"


async def test_client_stream_and_bidi_stream(harness: Harness) -> None:
    async def numbers() -> AsyncIterator[bytes]:
        for number in (b"1", b"2", b"39"):
            yield number

    total = await harness.channel.stream_unary(f"/{SERVICE}/Total", None, None)(
        numbers(), metadata=AUTH
    )
    echo = harness.channel.stream_stream(f"/{SERVICE}/Echo", None, None)(numbers(), metadata=AUTH)

    assert total == b"42"
    assert [response async for response in echo] == [b"acme:1", b"acme:2", b"acme:39"]


async def test_streams_require_a_token_too(harness: Harness) -> None:
    call = harness.channel.unary_stream(f"/{SERVICE}/Count", None, None)(b"1")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        [response async for response in call]

    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_expired_deadline_is_counted_as_such(harness: Harness) -> None:
    labels = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "Slow"}
    before = sample("grpc_server_handled_total", **labels, grpc_code="DEADLINE_EXCEEDED")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await harness.channel.unary_unary(f"/{SERVICE}/Slow", None, None)(
            b"5", metadata=AUTH, timeout=0.2
        )

    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED

    async def counted() -> bool:
        after = sample("grpc_server_handled_total", **labels, grpc_code="DEADLINE_EXCEEDED")
        return after == before + 1

    await eventually(counted)


async def test_core_channel_carries_identity_request_id_and_deadline(harness: Harness) -> None:
    metadata = (*AUTH, ("x-request-id", "req-hop"))

    response, _ = await harness.unary("Hop", metadata=metadata)

    identity = json.loads(response)
    assert identity == {
        "tenant": "acme",
        "subject": "alice",
        "request_id": "req-hop",
        "has_deadline": True,
    }


async def test_core_channel_forwards_the_caller_on_every_call_type(harness: Harness) -> None:
    response, _ = await harness.unary("HopStreams", metadata=AUTH)

    assert json.loads(response) == {
        "count": ["acme:0", "acme:1"],
        "total": "3",
        "echo": ["acme:1", "acme:2"],
    }


async def test_core_channel_retries_only_idempotent_methods(harness: Harness) -> None:
    settings = harness.servicer.settings
    assert settings is not None
    target = harness.servicer.hop_target
    idempotent = [(SERVICE, "Flaky")]
    async with (
        open_channel(target, settings, idempotent_methods=idempotent) as retrying,
        open_channel(target, settings) as plain,
    ):
        harness.servicer.flaky_failures_left = 3  # maxAttempts 4: the last attempt succeeds
        assert await retrying.unary_unary(f"/{SERVICE}/Flaky", None, None)(b"", metadata=AUTH)
        assert harness.servicer.flaky_failures_left == 0

        harness.servicer.flaky_failures_left = 1
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await plain.unary_unary(f"/{SERVICE}/Flaky", None, None)(b"", metadata=AUTH)
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
        assert harness.servicer.flaky_failures_left == 0


@pytest.mark.parametrize("fault", ["down", "hangs"])
async def test_health_follows_the_probes(harness: Harness, fault: str) -> None:
    stub = health_pb2_grpc.HealthStub(harness.channel)

    async def status(service: str) -> Any:
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        return response.status

    async def all_are(expected: Any) -> bool:
        return all([await status(name) == expected for name in ("", SERVICE)])

    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    assert await all_are(serving)  # no token needed for health
    assert await status(LIVENESS) == serving
    try:
        harness.faults[fault] = True
        await eventually(lambda: all_are(not_serving))
        # Readiness is down, liveness is not: a dependency outage must not restart us.
        assert await status(LIVENESS) == serving
        await harness.server.check_health()  # one more failing round changes nothing
        assert await status(LIVENESS) == serving
        assert not await all_are(serving)
    finally:
        harness.faults[fault] = False
    await eventually(lambda: all_are(serving))
    assert await status(LIVENESS) == serving
    events = [line["event"] for line in harness.log_lines()]
    assert events.count("health probe failed") >= 1
    assert "health changed" in events


async def _reflected_services(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask() -> AsyncIterator[Any]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    responses = [response async for response in stub.ServerReflectionInfo(ask())]
    return {service.name for service in responses[0].list_services_response.service}


async def test_reflection_lists_the_services_in_dev_only(harness: Harness) -> None:
    # The harness runs as production (the default env): no reflection.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _reflected_services(harness.channel)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED

    settings = settings_for_test(env="dev")
    servicer = ProbeServicer(settings=settings)
    spec = ServiceSpec(name="memory", service_names=[SERVICE], register=servicer.register)
    running = await start_server(settings, spec)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            names = await _reflected_services(channel)
    finally:
        await running.stop(0)
    assert {SERVICE, "grpc.health.v1.Health"} <= names


async def test_metrics_endpoint_counts_handled_calls(harness: Harness) -> None:
    async def handled_ok() -> float:
        url = f"http://127.0.0.1:{harness.server.metrics_port}/metrics"
        async with httpx.AsyncClient() as client:
            text = (await client.get(url)).raise_for_status().text
        for family in text_string_to_metric_families(text):
            for metric in family.samples:
                if metric.name == "grpc_server_handled_total" and metric.labels == {
                    "grpc_type": "unary",
                    "grpc_service": SERVICE,
                    "grpc_method": "Whoami",
                    "grpc_code": "OK",
                }:
                    return metric.value
        return 0.0

    before = await handled_ok()
    await harness.unary("Whoami")
    await harness.unary("Whoami")

    assert await handled_ok() == before + 2


async def test_access_log_line_is_json_with_request_and_trace_ids(harness: Harness) -> None:
    await harness.unary("Whoami", metadata=(*AUTH, ("x-request-id", "req-log")))

    (line,) = [entry for entry in harness.log_lines() if entry.get("request_id") == "req-log"]
    assert line["event"] == "rpc"
    assert line["level"] == "debug"
    assert line["service"] == "memory"
    assert line["tenant"] == "acme"
    assert line["grpc_method"] == f"/{SERVICE}/Whoami"
    assert line["grpc_code"] == "OK"
    assert len(line["trace_id"]) == 32
    assert line["timestamp"].endswith("Z")


async def test_start_server_requires_auth_settings() -> None:
    settings = Settings.from_env({"AGENTMESH_GRPC_PORT": "0"}, service="agent")
    spec = ServiceSpec(name="agent", service_names=[SERVICE], register=lambda server: None)

    with pytest.raises(ConfigError, match="AGENTMESH_AUTH_HS256_SECRET"):
        await start_server(settings, spec)


async def test_stop_drains_in_flight_calls_then_runs_on_stop() -> None:
    settings = settings_for_test()
    servicer = ProbeServicer(settings=settings)
    stopped: list[str] = []

    async def close_pool() -> None:
        stopped.append("pool closed")

    running = await start_server(
        settings,
        ServiceSpec(
            name="memory",
            service_names=[SERVICE],
            register=servicer.register,
            on_stop=[close_pool],
        ),
    )
    assert running.metrics_port is None  # metrics_port 0 disables the endpoint
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE)
        )
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        slow = channel.unary_unary(f"/{SERVICE}/Slow", None, None)(b"0.3", metadata=AUTH)
        await servicer.slow_started.wait()  # the slow call is in its handler: in flight

        live = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=LIVENESS)
        )
        assert (await live.read()).status == health_pb2.HealthCheckResponse.SERVING

        stopping = asyncio.create_task(running.stop(grace_s=1.0))

        # Load balancers watching health learn first; the in-flight call still completes.
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        # Liveness ends with the server too (Kubernetes stops liveness probes of a pod
        # being deleted, and a draining server refuses new calls anyway).
        assert (await live.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await slow == b"done"
        await stopping
        assert stopped == ["pool closed"]
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await channel.unary_unary(f"/{SERVICE}/Whoami", None, None)(
                b"", metadata=AUTH, timeout=1
            )
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_rs256_tokens_through_a_running_server_with_a_jwks_file(tmp_path: Path) -> None:
    """Production's shape: the server holds public keys only, a token signed by the
    issuer's private key is accepted, one signed by another key is not, and a rotated
    file is picked up without a restart."""
    issuer_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(key: rsa.RSAPrivateKey, kid: str) -> str:
        public = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
        return json.dumps({"keys": [{**public, "kid": kid, "alg": "RS256", "use": "sig"}]})

    def token(key: rsa.RSAPrivateKey, kid: str, tenant: str) -> tuple[tuple[str, str], ...]:
        now = int(time.time())
        claims = {"iss": "agentmesh", "aud": "agentmesh", "sub": "svc", "tenant": tenant}
        signed = jwt.encode(
            {**claims, "iat": now, "exp": now + 600}, key, algorithm="RS256", headers={"kid": kid}
        )
        return (("authorization", f"Bearer {signed}"),)

    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(jwks(issuer_key, "k1"))
    environ = {
        "AGENTMESH_GRPC_PORT": "0",
        "AGENTMESH_METRICS_PORT": "0",
        "AGENTMESH_AUTH_JWKS_FILE": str(jwks_file),
    }
    settings = Settings.from_env(environ, service="memory")
    servicer = ProbeServicer(settings=settings)
    spec = ServiceSpec(name="memory", service_names=[SERVICE], register=servicer.register)
    running = await start_server(settings, spec)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            whoami = channel.unary_unary(f"/{SERVICE}/Whoami", None, None)
            answer = await whoami(b"", metadata=token(issuer_key, "k1", "globex"))
            assert json.loads(answer)["tenant"] == "globex"
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await whoami(b"", metadata=token(other_key, "k1", "globex"))
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED

            jwks_file.write_text(jwks(other_key, "k2"))  # the issuer rotates its key

            async def rotated() -> bool:
                try:
                    await whoami(b"", metadata=token(other_key, "k2", "globex"))
                except grpc.aio.AioRpcError:
                    return False
                return True

            await eventually(rotated, timeout_s=15)
    finally:
        await running.stop(0)
