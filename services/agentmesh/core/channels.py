"""gRPC client channels to other services: deadlines, retries, identity propagation.

Every outgoing call gets a deadline (``client_deadline_ms`` unless the caller set one),
the current ``x-request-id`` and the caller's ``authorization`` (so the next service
scopes the call to the same tenant), and OpenTelemetry trace context. Only methods
declared idempotent are retried, on UNAVAILABLE, with exponential backoff; the same
policy is configured on Envoy's routes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

import grpc

from agentmesh.core.context import current_call
from agentmesh.core.interceptors import AUTHORIZATION_KEY, REQUEST_ID_KEY
from agentmesh.core.retries import RETRY_POLICY, service_config
from agentmesh.core.settings import Settings
from agentmesh.core.tracing import client_interceptors

__all__ = [
    "RETRY_POLICY",
    "channel_options",
    "open_channel",
    "outgoing_interceptors",
    "service_config",
]

# grpc-stubs makes the interceptor bases generic; the runtime classes are not subscriptable.
if TYPE_CHECKING:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor
    _StreamStream = grpc.aio.StreamStreamClientInterceptor


class _Outgoing:
    """Adds the default deadline and forwards request id and credential.

    grpc.aio files an interceptor under the first call type it implements only, so
    each call type gets an instance of its own (:func:`outgoing_interceptors`)."""

    def __init__(self, default_timeout_s: float) -> None:
        self._default_timeout_s = default_timeout_s

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        timeout = self._default_timeout_s if details.timeout is None else details.timeout
        metadata = details.metadata
        call = current_call()
        if call is not None:
            metadata = grpc.aio.Metadata(*(metadata or ()))
            if REQUEST_ID_KEY not in metadata:
                metadata.add(REQUEST_ID_KEY, call.request_id)
            if call.authorization and AUTHORIZATION_KEY not in metadata:
                metadata.add(AUTHORIZATION_KEY, call.authorization)
        return grpc.aio.ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )


class _OutgoingUnaryUnary(_Outgoing, _UnaryUnary):
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _OutgoingUnaryStream(_Outgoing, _UnaryStream):
    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _OutgoingStreamUnary(_Outgoing, _StreamUnary):
    async def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _OutgoingStreamStream(_Outgoing, _StreamStream):
    async def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def outgoing_interceptors(default_timeout_s: float) -> list[grpc.aio.ClientInterceptor]:
    """The deadline and forwarding interceptors, one per call type."""
    # grpc-stubs models ClientInterceptor as an opaque type that needs a cast.
    return [
        cast(grpc.aio.ClientInterceptor, kind(default_timeout_s))
        for kind in (
            _OutgoingUnaryUnary,
            _OutgoingUnaryStream,
            _OutgoingStreamUnary,
            _OutgoingStreamStream,
        )
    ]


def channel_options(
    settings: Settings, idempotent_methods: Iterable[tuple[str, str]] = ()
) -> list[tuple[str, Any]]:
    """Channel arguments: retry service config, message limits, keepalive (as servers)."""
    return [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(idempotent_methods)),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", settings.keepalive_time_s * 1000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def open_channel(
    target: str,
    settings: Settings,
    *,
    idempotent_methods: Sequence[tuple[str, str]] = (),
) -> grpc.aio.Channel:
    """An insecure (in-mesh, plaintext) channel to ``target`` (``host:port``).

    ``idempotent_methods`` lists the ``(service, method)`` pairs that may be retried.
    Close the channel (``await channel.close()``) in the service's ``on_stop``.
    """
    return grpc.aio.insecure_channel(
        target,
        options=channel_options(settings, idempotent_methods),
        interceptors=[
            *outgoing_interceptors(settings.client_deadline_ms / 1000),
            *client_interceptors(),
        ],
    )
