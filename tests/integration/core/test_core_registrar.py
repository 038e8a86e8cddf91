"""InterceptingRegistrar: our interceptor applied at registration, over real gRPC.

Every way a handler can be registered through the registrar must end up behind the
interceptor (authentication, request id, error mapping); nothing may escape it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest

from agentmesh.agent.registry import builtin_registry
from agentmesh.agent.servicer import AgentServicer
from agentmesh.core.auth import Authenticator, mint_token
from agentmesh.core.errors import InvalidArgument
from agentmesh.core.interceptors import InterceptingRegistrar, ServerInterceptor
from agentmesh.v1 import agent_pb2, agent_pb2_grpc

pytestmark = pytest.mark.integration

SECRET = "registrar-test-secret-of-at-least-32-bytes"
AUTH = (("authorization", f"Bearer {mint_token(SECRET, 'acme')}"),)
GENERIC_SERVICE = "agentmesh.test.GenericOnly"


async def _invalid(request: bytes, context: Any) -> bytes:
    raise InvalidArgument("name", "bad")


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server()  # no interceptors: the registrar does the wrapping
    registrar = InterceptingRegistrar(server, ServerInterceptor(Authenticator(hs256_secret=SECRET)))
    servicer = AgentServicer(builtin_registry())
    agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, registrar)  # type: ignore[arg-type]
    # Registered only as a generic handler (no per-method registration): wrapped too.
    generic = grpc.method_handlers_generic_handler(
        GENERIC_SERVICE, {"Invalid": grpc.unary_unary_rpc_method_handler(_invalid)}
    )
    registrar.add_generic_rpc_handlers((generic,))
    registrar.finish()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
            yield chan
    finally:
        await server.stop(0)


def _pairs(metadata: Any) -> dict[str, Any]:
    return dict(metadata or ())


def _trailers(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    return _pairs(error.trailing_metadata())


async def test_generated_registration_is_behind_the_interceptor(
    channel: grpc.aio.Channel,
) -> None:
    stub = cast("agent_pb2_grpc.AgentServiceAsyncStub", agent_pb2_grpc.AgentServiceStub(channel))
    request = agent_pb2.GetAgentRequest(name="agents/echo")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetAgent(request)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _trailers(refused.value).get("x-request-id")

    call: Any = stub.GetAgent(request, metadata=(*AUTH, ("x-request-id", "reg-1")))
    agent = await call
    assert agent.name == "agents/echo"
    assert _pairs(await call.trailing_metadata()).get("x-request-id") == "reg-1"

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetAgent(agent_pb2.GetAgentRequest(name="agents/nobody"), metadata=AUTH)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_generic_only_handler_is_behind_the_interceptor(
    channel: grpc.aio.Channel,
) -> None:
    invalid = channel.unary_unary(f"/{GENERIC_SERVICE}/Invalid", None, None)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await invalid(b"")
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as mapped:
        await invalid(b"", metadata=AUTH)
    # Our error mapping ran: a DomainError became INVALID_ARGUMENT with rich details.
    assert mapped.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "grpc-status-details-bin" in _trailers(mapped.value)


async def test_an_unknown_method_is_unimplemented(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await channel.unary_unary("/agentmesh.v1.AgentService/Nope", None, None)(b"", metadata=AUTH)
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
