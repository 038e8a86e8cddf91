"""The synchronous client: the generated grpcio stubs on one channel whose interceptor
adds the token, the ``x-request-id`` and the deadline to every call, and whose service
config retries the idempotent methods on UNAVAILABLE (the mesh's one policy)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc

from agentmesh.core.retries import idempotent_methods, keyed_methods, service_config
from agentmesh.sdk._calls import (
    UNSET,
    CallOptions,
    MetadataLike,
    Unset,
    call_metadata,
    resolve_address,
    resolve_token,
    with_request_id,
)
from agentmesh.sdkgen.agentmesh.v1 import (
    AgentServiceStub,
    ConductorServiceStub,
    JobServiceStub,
    MemoryServiceStub,
)

# grpc-stubs makes the interceptor bases generic; the runtime classes are not subscriptable.
if TYPE_CHECKING:
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.UnaryStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.UnaryStreamClientInterceptor


class _Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _CallDetails(_Details, grpc.ClientCallDetails):  # type: ignore[misc]
    """grpc.ClientCallDetails is an interface; a named tuple carries its fields."""


class _Calls(_UnaryUnary, _UnaryStream):
    """Adds a client's :class:`CallOptions` to each call and fills keyed creates'
    ``request_id``."""

    def __init__(self, options: CallOptions) -> None:
        self.options = options

    def _details(self, details: grpc.ClientCallDetails, *, streaming: bool) -> _CallDetails:
        timeout = details.timeout
        if timeout is None:
            timeout = self.options.timeout_for(streaming=streaming)
        return _CallDetails(
            method=_path(details.method),
            timeout=timeout,
            metadata=call_metadata(self.options, details.metadata),
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
            compression=getattr(details, "compression", None),
        )

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        path = _path(client_call_details.method)
        details = self._details(client_call_details, streaming=False)
        return continuation(details, with_request_id(path, request))

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        return continuation(self._details(client_call_details, streaming=True), request)


def _path(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method


def channel_options(extra: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """grpcio channel arguments: the mesh's retry policy for the retried methods."""
    retried = idempotent_methods() + keyed_methods()
    return [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(retried)),
        *extra,
    ]


class MeshClient:
    """One channel to the mesh (Envoy, or one service) and a stub per service.

    ``client.memory.create_session(CreateSessionRequest(...))``: the stubs are the
    generated ones; the channel adds the token, an ``x-request-id`` and the deadline.
    Errors raise :class:`grpc.RpcError` (``.code()``, ``.details()``;
    :func:`agentmesh.sdk.error_details` reads the reason and request id).
    """

    def __init__(
        self, channel: grpc.Channel, options: CallOptions, *, owns_channel: bool = True
    ) -> None:
        self._raw = channel
        self._owns_channel = owns_channel
        self.options = options
        """What every call of this client carries."""
        self.channel: grpc.Channel = grpc.intercept_channel(channel, _Calls(options))
        """The channel the stubs call through (token, request id and deadline added)."""
        self.memory = MemoryServiceStub(self.channel)
        self.agent = AgentServiceStub(self.channel)
        self.job = JobServiceStub(self.channel)
        self.conductor = ConductorServiceStub(self.channel)

    def with_options(
        self,
        *,
        timeout: float | None | Unset = UNSET,
        stream_timeout: float | None | Unset = UNSET,
        request_id: str | None | Unset = UNSET,
        metadata: MetadataLike | Unset = UNSET,
    ) -> MeshClient:
        """This client with other call options, on the same channel (closing it leaves
        the channel open): ``client.with_options(timeout=2).agent.list_agents(...)``."""
        options = self.options.replace(
            timeout=timeout, stream_timeout=stream_timeout, request_id=request_id, metadata=metadata
        )
        return MeshClient(self._raw, options, owns_channel=False)

    def close(self) -> None:
        """Closes the channel (of the client :func:`connect` returned; no-op on a view)."""
        if self._owns_channel:
            self._raw.close()

    def __enter__(self) -> MeshClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def connect(
    address: str | None = None,
    token: str | None = None,
    *,
    timeout: float | None = CallOptions.timeout,
    stream_timeout: float | None = None,
    metadata: MetadataLike | None = None,
    tls: bool | grpc.ChannelCredentials = False,
    channel_args: Sequence[tuple[str, Any]] = (),
) -> MeshClient:
    """A synchronous client of the mesh at ``address`` (``host:port``).

    ``address`` defaults to ``AGENTMESH_ADDRESS``, else ``127.0.0.1:8080`` (Envoy under
    ``make dev``); ``token`` to ``AGENTMESH_TOKEN``. ``timeout`` is each unary call's
    deadline in seconds, ``stream_timeout`` each stream's (None: none). ``tls=True``
    connects with TLS and the system's root certificates; pass
    ``grpc.ssl_channel_credentials(...)`` for other roots or a client certificate.
    ``channel_args`` are extra grpcio channel arguments.
    """
    target = resolve_address(address)
    options = CallOptions(
        token=resolve_token(token), timeout=timeout, stream_timeout=stream_timeout
    )
    options = options.replace(metadata=metadata or ())
    args = channel_options(channel_args)
    channel: grpc.Channel
    if tls is False:
        channel = grpc.insecure_channel(target, options=args)
    else:
        credentials = grpc.ssl_channel_credentials() if tls is True else tls
        channel = grpc.secure_channel(target, credentials, options=args)
    return MeshClient(channel, options)
