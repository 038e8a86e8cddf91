"""The asynchronous client: the generated grpclib stubs, each call given the token, the
``x-request-id`` and the deadline, and the idempotent methods retried on UNAVAILABLE
with the mesh's backoff (grpclib has no retries of its own).

Every failure of a call is a :class:`grpclib.exceptions.GRPCError`: a refused
connection is UNAVAILABLE and the client's own deadline DEADLINE_EXCEEDED, as grpcio
reports them.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import betterproto2
from betterproto2.grpclib.grpclib_client import ServiceStub
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.metadata import Deadline

from agentmesh.core.retries import MAX_ATTEMPTS, backoff_s
from agentmesh.sdk._calls import (
    RETRIED_ROUTES,
    UNSET,
    CallOptions,
    MetadataLike,
    Unset,
    call_metadata,
    resolve_address,
    resolve_token,
    split_address,
    with_request_id,
)
from agentmesh.sdkgen.agentmesh.v1 import (
    AgentServiceAsyncStub,
    ConductorServiceAsyncStub,
    JobServiceAsyncStub,
    MemoryServiceAsyncStub,
)

T = TypeVar("T", bound=betterproto2.Message)

_TRANSPORT_ERRORS = (OSError, StreamTerminatedError)
"""A refused or dropped connection: grpcio would report UNAVAILABLE."""


def _as_grpc_error(exc: BaseException) -> GRPCError:
    if isinstance(exc, GRPCError):
        return exc
    if isinstance(exc, TimeoutError):
        return GRPCError(Status.DEADLINE_EXCEEDED, "Deadline exceeded")
    return GRPCError(Status.UNAVAILABLE, f"{type(exc).__name__}: {exc}")


def _deadline(
    options: CallOptions, timeout: float | None, deadline: Deadline | None, *, streaming: bool
) -> Deadline | None:
    if deadline is not None:
        return deadline
    if timeout is None:
        timeout = options.timeout_for(streaming=streaming)
    return None if timeout is None else Deadline.from_timeout(timeout)


class _MeshCalls(ServiceStub):
    """Overrides the calls every generated method goes through."""

    options: CallOptions = CallOptions()

    async def _unary_unary(
        self,
        route: str,
        request: Any,
        response_type: type[T],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the generated stubs' signature)
        deadline: Deadline | None = None,
        metadata: MetadataLike | None = None,
    ) -> T:
        request = with_request_id(route, request)
        pairs = call_metadata(self.options, metadata)
        deadline = _deadline(self.options, timeout, deadline, streaming=False)
        attempts = MAX_ATTEMPTS if route in RETRIED_ROUTES else 1
        retry = 0
        while True:
            try:
                return await super()._unary_unary(
                    route, request, response_type, deadline=deadline, metadata=pairs
                )
            except (GRPCError, TimeoutError, *_TRANSPORT_ERRORS) as exc:
                error = _as_grpc_error(exc)
                retry += 1
                if error.status != Status.UNAVAILABLE or retry >= attempts:
                    if error is exc:
                        raise
                    raise error from exc
                wait = backoff_s(retry)
                if deadline is not None and deadline.time_remaining() <= wait:
                    raise error from exc
            await asyncio.sleep(wait)

    async def _unary_stream(
        self,
        route: str,
        request: Any,
        response_type: type[T],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the generated stubs' signature)
        deadline: Deadline | None = None,
        metadata: MetadataLike | None = None,
    ) -> AsyncIterator[T]:
        stream = super()._unary_stream(
            route,
            request,
            response_type,
            deadline=_deadline(self.options, timeout, deadline, streaming=True),
            metadata=call_metadata(self.options, metadata),
        )
        try:
            async for message in stream:
                yield message
        except GRPCError:
            raise
        except (TimeoutError, *_TRANSPORT_ERRORS) as exc:
            raise _as_grpc_error(exc) from exc


class _Memory(_MeshCalls, MemoryServiceAsyncStub):
    pass


class _Agent(_MeshCalls, AgentServiceAsyncStub):
    pass


class _Job(_MeshCalls, JobServiceAsyncStub):
    pass


class _Conductor(_MeshCalls, ConductorServiceAsyncStub):
    pass


def _stub(kind: type[_MeshCalls], channel: Channel, options: CallOptions) -> Any:
    stub = kind(channel)
    stub.options = options
    return stub


class AsyncMeshClient:
    """One grpclib channel to the mesh (Envoy, or one service) and a stub per service.

    ``await client.memory.create_session(CreateSessionRequest(...))``; each generated
    method also takes ``timeout=``, ``deadline=`` and ``metadata=`` (an
    ``x-request-id`` there is sent instead of a fresh one). Errors raise
    :class:`grpclib.exceptions.GRPCError` (``.status``, ``.message``, ``.details``;
    :func:`agentmesh.sdk.error_details` reads the reason and request id). Use it as
    ``async with``, or call :meth:`close`.
    """

    def __init__(self, channel: Channel, options: CallOptions, *, owns_channel: bool = True):
        self.channel = channel
        self.options = options
        """What every call of this client carries."""
        self._owns_channel = owns_channel
        self.memory: MemoryServiceAsyncStub = _stub(_Memory, channel, options)
        self.agent: AgentServiceAsyncStub = _stub(_Agent, channel, options)
        self.job: JobServiceAsyncStub = _stub(_Job, channel, options)
        self.conductor: ConductorServiceAsyncStub = _stub(_Conductor, channel, options)

    def with_options(
        self,
        *,
        timeout: float | None | Unset = UNSET,
        stream_timeout: float | None | Unset = UNSET,
        request_id: str | None | Unset = UNSET,
        metadata: MetadataLike | Unset = UNSET,
    ) -> AsyncMeshClient:
        """This client with other call options, on the same channel (closing it leaves
        the channel open)."""
        options = self.options.replace(
            timeout=timeout, stream_timeout=stream_timeout, request_id=request_id, metadata=metadata
        )
        return AsyncMeshClient(self.channel, options, owns_channel=False)

    def close(self) -> None:
        """Closes the channel (of the client :func:`aconnect` returned; no-op on a view)."""
        if self._owns_channel:
            self.channel.close()

    async def __aenter__(self) -> AsyncMeshClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def aconnect(
    address: str | None = None,
    token: str | None = None,
    *,
    timeout: float | None = CallOptions.timeout,
    stream_timeout: float | None = None,
    metadata: MetadataLike | None = None,
    tls: bool | ssl.SSLContext = False,
) -> AsyncMeshClient:
    """An asynchronous client of the mesh at ``address`` (``host:port``); call it from
    a coroutine (the channel binds to the running event loop). Nothing connects until
    the first call.

    The same defaults as :func:`agentmesh.sdk.connect`: ``AGENTMESH_ADDRESS`` and
    ``AGENTMESH_TOKEN``, ``timeout`` per unary call, ``stream_timeout`` per stream.
    ``tls=True`` connects with TLS (certifi's roots when installed, else the system's);
    pass an :class:`ssl.SSLContext` (ALPN ``h2``) for other roots or a client certificate.
    """
    host, port = split_address(resolve_address(address))
    options = CallOptions(
        token=resolve_token(token), timeout=timeout, stream_timeout=stream_timeout
    )
    options = options.replace(metadata=metadata or ())
    channel = Channel(host, port, ssl=tls or None)
    return AsyncMeshClient(channel, options)


__all__: Sequence[str] = ("AsyncMeshClient", "aconnect")
