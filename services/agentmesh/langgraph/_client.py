"""What the saver and the store share: the Memory stub, credentials, deadlines, and
running their async methods from synchronous LangGraph code.

Credentials: MemoryService scopes everything by the tenant of the caller's token. A
saver built with ``token=`` (a string, or a callable for tokens that rotate) sends
that; without one it forwards the ``authorization`` of the RPC being served
(``current_authorization()``), so an agent serving a request persists its graph as
the caller's tenant. Outside any RPC and without a token, calls fail loudly rather
than going out unauthenticated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Final, TypeVar, cast

import grpc
from google.protobuf.message import Message

from agentmesh.core.channels import open_channel
from agentmesh.core.context import MissingCallContextError, current_authorization
from agentmesh.core.retries import idempotent_methods
from agentmesh.core.settings import Settings
from agentmesh.v1 import memory_pb2, memory_pb2_grpc

T = TypeVar("T")
Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)

TokenSource = str | Callable[[], str] | None
"""A bearer token, or a function returning the current one, or None to forward."""

DEFAULT_TIMEOUT_S: Final = 10.0

_SERVICE: Final = memory_pb2.DESCRIPTOR.services_by_name["MemoryService"]
IDEMPOTENT_METHODS: Final = idempotent_methods([_SERVICE])
"""MemoryService methods a channel may retry on UNAVAILABLE (from the contract)."""

# The authorization a synchronous call captured in its own thread, handed to the
# coroutine that runs on the event loop's thread (where the caller's context is absent).
_handed_over: ContextVar[str | None] = ContextVar("agentmesh_langgraph_authorization", default=None)


def open_memory_channel(target: str, settings: Settings) -> grpc.aio.Channel:
    """A channel to MemoryService at ``target`` with the mesh's deadlines and retries."""
    return open_channel(target, settings, idempotent_methods=IDEMPOTENT_METHODS)


class MemoryClient:
    """The Memory stub plus the credentials and deadline every call carries."""

    def __init__(self, channel: grpc.aio.Channel, *, token: TokenSource, timeout_s: float) -> None:
        # mypy-protobuf types the runtime stub as the AsyncStub on an aio channel.
        self.stub = cast(
            "memory_pb2_grpc.MemoryServiceAsyncStub", memory_pb2_grpc.MemoryServiceStub(channel)
        )
        self._token = token
        self._timeout_s = timeout_s

    def authorization(self) -> str:
        """The ``authorization`` header value for the next call."""
        if self._token is not None:
            token = self._token() if callable(self._token) else self._token
            return f"Bearer {token}"
        forwarded = _handed_over.get() or current_authorization()
        if forwarded is None:
            raise MissingCallContextError(
                "no credential for MemoryService: pass token= to the saver/store, "
                "or call it while serving an authenticated RPC"
            )
        return forwarded

    async def call(self, method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp], request: Req) -> Resp:
        """Calls ``method`` with the credential and the deadline."""
        metadata = (("authorization", self.authorization()),)
        return await method(request, metadata=metadata, timeout=self._timeout_s)


def running_loop_or_none() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def run_sync(
    loop: asyncio.AbstractEventLoop,
    client: MemoryClient,
    make: Callable[[], Awaitable[T]],
    *,
    async_name: str,
) -> T:
    """Runs ``make()`` on ``loop`` (where the gRPC channel lives) from another thread and
    waits for it, as LangGraph's AsyncPostgresSaver does for its sync methods.

    On the loop's own thread this would deadlock, so it raises instead and names the
    async method to use.
    """
    if running_loop_or_none() is loop:
        raise asyncio.InvalidStateError(
            "synchronous calls to agentmesh's LangGraph saver/store are only allowed from "
            f"another thread; on the event loop use `await ...{async_name}(...)` "
            "(e.g. `await graph.ainvoke(...)`)"
        )
    authorization = client.authorization()  # resolved here, in the caller's context

    async def with_caller_credential() -> T:
        _handed_over.set(authorization)
        return await make()

    return asyncio.run_coroutine_threadsafe(with_caller_credential(), loop).result()
