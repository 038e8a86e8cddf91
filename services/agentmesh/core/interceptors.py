"""The one server interceptor: tracing, request id, authentication, error mapping,
metrics, access log.

One interceptor instead of five keeps a single wrapper layer per call. Its wrapped method
handlers are built once per method and cached, so a call allocates only a
:class:`_CallContext` and a :class:`~agentmesh.core.context.CallInfo`.

Order inside a call: request id (from ``x-request-id`` or generated, always returned in the
trailing metadata) → authentication (except health and reflection) → the handler → the
outcome mapped to a status: :class:`~agentmesh.core.errors.DomainError` gives its code and
rich details, any other exception INTERNAL with the request id (stack trace logged) →
metrics and one access log line.

Tracing lives here too, instead of in opentelemetry-instrumentation-grpc's aio
interceptor: that one wrapped every call in a second handler, coroutine and context
proxy and ran a slow method filter, ~200 µs per call on these machines, most of the
gap to a bare server in docs/benchmarks.md. Here the span's name and attributes are
computed once per method, the parent context is extracted only when the caller sent
``traceparent``, and the span ends in the same place the metrics are recorded. The
span follows OpenTelemetry's RPC conventions (``rpc.system``, ``rpc.service``,
``rpc.method``, ``rpc.grpc.status_code``; error status for server-side codes).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, NoReturn

import grpc
import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from agentmesh.core import context
from agentmesh.core.auth import Authenticator
from agentmesh.core.errors import DomainError, Unauthenticated, internal_status, to_rpc_status
from agentmesh.core.malformed import refuse_malformed, tolerant
from agentmesh.core.metrics import MethodMetrics
from agentmesh.core.outages import as_domain_error

REQUEST_ID_KEY: Final = "x-request-id"
AUTHORIZATION_KEY: Final = "authorization"
TRACEPARENT_KEY: Final = "traceparent"
TRACESTATE_KEY: Final = "tracestate"

# Codes that mean the server failed (OpenTelemetry RPC semantic conventions); the
# others are the client's business and leave the server span's status unset.
_SERVER_ERROR_CODES: Final = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

# Methods that must answer without a credential: probes (kubelet, Envoy) and tooling.
_UNAUTHENTICATED_PREFIXES: Final = ("/grpc.health.v1.Health/", "/grpc.reflection.")

# A caller-supplied request id is echoed and logged, so accept only short, plain ids.
_VALID_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:\-]{1,128}")

_Behavior = Callable[[Any, Any], Any]

# grpc-stubs makes these types generic; the runtime classes are not subscriptable.
if TYPE_CHECKING:
    _Handler = grpc.RpcMethodHandler[Any, Any]
    _ServerInterceptorBase = grpc.aio.ServerInterceptor[Any, Any]
    _GenericHandler = grpc.GenericRpcHandler[Any, Any]
else:
    _Handler = grpc.RpcMethodHandler
    _ServerInterceptorBase = grpc.aio.ServerInterceptor
    _GenericHandler = grpc.GenericRpcHandler


class _CallContext:
    """The servicer context as handlers see it, with two additions.

    It remembers the status code a handler sets or aborts with (grpc.aio's context does
    not report the code of an abort), and keeps ``x-request-id`` in the trailing
    metadata whatever the handler sets. Everything else is delegated unchanged.
    """

    __slots__ = ("_context", "code", "request_id", "span", "span_token")

    def __init__(self, servicer_context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._context = servicer_context
        self.code = grpc.StatusCode.OK
        self.request_id = ""
        self.span: trace.Span | None = None
        self.span_token: object = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    def start(self, request_id: str) -> None:
        """Adopt the call's request id and return it to the client whatever happens."""
        self.request_id = request_id
        self._context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code
        self._context.set_code(code)

    def set_trailing_metadata(self, trailing_metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        self._context.set_trailing_metadata((*trailing_metadata, (REQUEST_ID_KEY, self.request_id)))

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: tuple[tuple[str, str | bytes], ...] = (),
    ) -> NoReturn:
        self.code = code
        if trailing_metadata:
            trailing_metadata = (*trailing_metadata, (REQUEST_ID_KEY, self.request_id))
        else:
            # Keep what the handler (or we, at the start) already set, request id included.
            trailing_metadata = tuple(self._context.trailing_metadata())
        await self._context.abort(code, details, trailing_metadata)
        raise AssertionError("grpc.aio abort() returned instead of raising")  # pragma: no cover

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        await self.abort(status.code, status.details, tuple(status.trailing_metadata))


class _Method:
    """Everything per method that can be computed once: names, auth rule, metrics, span."""

    __slots__ = ("authenticated", "full_name", "metrics", "span_attributes", "span_name")

    def __init__(self, full_name: str, handler: grpc.RpcMethodHandler[Any, Any]) -> None:
        self.full_name = full_name
        # Health and reflection need no credential and get no span: probes every second
        # would drown the real traffic in traces.
        self.authenticated = not full_name.startswith(_UNAUTHENTICATED_PREFIXES)
        service, _, method = full_name[1:].rpartition("/")
        self.span_name = full_name[1:]
        self.span_attributes: dict[str, str] = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": method,
        }
        if handler.request_streaming:
            grpc_type = "bidi_stream" if handler.response_streaming else "client_stream"
        else:
            grpc_type = "server_stream" if handler.response_streaming else "unary"
        self.metrics = MethodMetrics(grpc_type, service, method)


class ServerInterceptor(_ServerInterceptorBase):
    """See the module docstring. One instance per server."""

    def __init__(self, authenticator: Authenticator, tracer: trace.Tracer | None = None) -> None:
        self._authenticator = authenticator
        # The API's proxy tracer follows whatever provider configure_tracing() installs.
        self._tracer = tracer or trace.get_tracer("agentmesh.grpc")
        # full method name -> (handler as registered, our wrapper around it)
        self._handlers: dict[str, tuple[_Handler, _Handler]] = {}
        # Bound now, per server: a process (or test) that configures logging before
        # building its server gets that configuration, and calls skip structlog's lazy
        # proxy. Successful calls log at debug; when that is off, skip building the line.
        self._log: Any = structlog.get_logger("agentmesh.grpc").bind()
        self._log_successes: bool = self._log.is_enabled_for(logging.DEBUG)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED itself
            return handler
        full_name = handler_call_details.method
        cached = self._handlers.get(full_name)
        # Generic handlers return the same handler object per method, so the cached
        # wrapper is reused; a different object (re-registration) is wrapped anew.
        if cached is None or cached[0] is not handler:
            cached = (handler, self._wrap(_Method(full_name, handler), handler))
            self._handlers[full_name] = cached
        return cached[1]

    def wrap_handler(
        self, full_name: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """``handler`` (of ``/package.Service/Method``) with this interceptor around it,
        for registering directly on a server (see :class:`InterceptingRegistrar`)."""
        return self._wrap(_Method(full_name, handler), handler)

    def _wrap(
        self, method: _Method, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                self._streaming(method, handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(method, handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(method, handler.unary_stream),
                request_deserializer=tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            self._unary(method, handler.unary_unary),
            request_deserializer=tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _unary(self, method: _Method, behavior: _Behavior | None) -> _Behavior:
        """Wrap a handler with a single response (unary-unary, stream-unary)."""
        assert behavior is not None, f"{method.full_name}: handler without behavior"

        async def intercepted(request: Any, servicer_context: Any) -> Any:
            started = time.perf_counter()
            call = _CallContext(servicer_context)
            try:
                self._begin(method, call)
                refuse_malformed(request)
                response = await behavior(request, call)
            except BaseException as exc:
                await self._fail(method, call, exc, started)
            self._record(method, call, started, call.code, None)  # OK unless the handler set one
            return response

        return intercepted

    def _streaming(self, method: _Method, behavior: _Behavior | None) -> _Behavior:
        """Wrap a handler with a response stream (unary-stream, stream-stream).

        The wrapper is always an async generator: grpc.aio then drives it the same way
        whether the handler yields responses or writes them with ``context.write()``
        (a coroutine handler is awaited inside and the wrapper yields nothing), and the
        OpenTelemetry interceptor outside, which iterates its inner handler, works too.
        """
        assert behavior is not None, f"{method.full_name}: handler without behavior"
        writes_itself = inspect.iscoroutinefunction(behavior)

        async def intercepted(request: Any, servicer_context: Any) -> AsyncIterator[Any]:
            started = time.perf_counter()
            call = _CallContext(servicer_context)
            try:
                self._begin(method, call)
                refuse_malformed(request)
                if writes_itself:
                    await behavior(request, call)
                else:
                    async for response in behavior(request, call):
                        yield response
            except GeneratorExit:
                # grpc.aio stopped iterating (the call was aborted or cancelled while a
                # response was being sent) and the generator is being closed: nothing
                # may be awaited here, only counted.
                aborted = call.code is not grpc.StatusCode.OK
                code = call.code if aborted else grpc.StatusCode.CANCELLED
                self._record(method, call, started, code, None)
                raise
            except BaseException as exc:
                await self._fail(method, call, exc, started)
            self._record(method, call, started, call.code, None)  # OK unless the handler set one

        return intercepted

    def _begin(self, method: _Method, call: _CallContext) -> None:
        """Request id, authentication, context binding; raises Unauthenticated."""
        method.metrics.started()
        request_id = authorization = traceparent = tracestate = None
        authorizations = 0
        for key, value in call.invocation_metadata() or ():
            if key == REQUEST_ID_KEY:
                request_id = value
            elif key == AUTHORIZATION_KEY:
                authorization = value
                authorizations += 1
            elif key == TRACEPARENT_KEY:
                traceparent = value
            elif key == TRACESTATE_KEY:
                tracestate = value
        if request_id is None or not _VALID_REQUEST_ID.fullmatch(request_id):
            request_id = os.urandom(16).hex()
        call.start(request_id)
        if not method.authenticated:
            context.bind_call(request_id)
            return
        self._start_span(method, call, traceparent, tracestate)
        try:
            if authorizations > 1:
                # Which one would a proxy in front have checked? Refuse rather than guess.
                raise Unauthenticated(
                    "more than one authorization header", reason="DUPLICATE_AUTHORIZATION"
                )
            principal = self._authenticator.authenticate(authorization)
        except DomainError:
            context.bind_call(request_id)  # so the refusal is logged with its request id
            raise
        context.bind_call(
            request_id,
            tenant=principal.tenant,
            subject=principal.subject,
            authorization=authorization,
        )

    def _start_span(
        self, method: _Method, call: _CallContext, traceparent: str | None, tracestate: str | None
    ) -> None:
        """Start the server span (child of the caller's, if any) and make it current."""
        parent = None
        if traceparent is not None:
            carrier = {TRACEPARENT_KEY: traceparent}
            if tracestate is not None:
                carrier[TRACESTATE_KEY] = tracestate
            parent = propagate.extract(carrier)
        span = self._tracer.start_span(
            method.span_name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=method.span_attributes,
        )
        call.span = span
        call.span_token = otel_context.attach(trace.set_span_in_context(span))

    @staticmethod
    def _end_span(call: _CallContext, code: grpc.StatusCode, exc: BaseException | None) -> None:
        span = call.span
        if span is None:
            return
        call.span = None
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in _SERVER_ERROR_CODES:
            span.set_status(Status(StatusCode.ERROR, code.name))
            if exc is not None and not isinstance(exc, DomainError):
                span.record_exception(exc)
        span.end()
        otel_context.detach(call.span_token)  # type: ignore[arg-type]

    async def _fail(
        self, method: _Method, call: _CallContext, exc: BaseException, started: float
    ) -> NoReturn:
        """Turn what the handler raised into the call's status; always re-raises."""
        if isinstance(exc, grpc.aio.AbortError):
            # The handler (or _CallContext.abort) already sent the status; pass it through.
            self._record(method, call, started, call.code, None)
            raise exc
        if isinstance(exc, asyncio.CancelledError):
            # grpc.aio cancels the handler when the client goes away or its deadline passes.
            remaining_s = call.time_remaining()
            expired = remaining_s is not None and remaining_s <= 0
            code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            self._record(method, call, started, code, None)
            raise exc
        if not isinstance(exc, DomainError):
            exc = as_domain_error(exc) or exc  # an outage, a timeout, bad data: not bugs
        if isinstance(exc, DomainError):
            self._record(method, call, started, exc.code, exc)
            await call.abort_with_status(to_rpc_status(exc, call.request_id))
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: not ours
            raise exc
        if call.code is not grpc.StatusCode.OK:
            # The handler chose a code before failing; keep it (as grpc would) rather
            # than turning a deliberate, say, INVALID_ARGUMENT into INTERNAL.
            self._record(method, call, started, call.code, exc)
            await call.abort(call.code, call.details() or "")
        self._record(method, call, started, grpc.StatusCode.INTERNAL, exc)
        await call.abort_with_status(internal_status(call.request_id))

    def _record(
        self,
        method: _Method,
        call: _CallContext,
        started: float,
        code: grpc.StatusCode,
        exc: BaseException | None,
    ) -> None:
        """Counts and logs the call, then ends its span; runs exactly once per call.

        The span ends last so that the access log line still carries its trace id.
        """
        try:
            self._count_and_log(method, started, code, exc)
        finally:
            self._end_span(call, code, exc)

    def _count_and_log(
        self, method: _Method, started: float, code: grpc.StatusCode, exc: BaseException | None
    ) -> None:
        elapsed_s = time.perf_counter() - started
        code_name = code.name
        method.metrics.handled(code_name, elapsed_s)
        if code is grpc.StatusCode.OK:
            if self._log_successes:
                self._log.debug(
                    "rpc",
                    grpc_method=method.full_name,
                    grpc_code=code_name,
                    duration_ms=round(elapsed_s * 1000, 3),
                )
        elif exc is None or isinstance(exc, DomainError):
            # Expected failures (domain errors, codes set by the handler): one info line.
            self._log.info(
                "rpc",
                grpc_method=method.full_name,
                grpc_code=code_name,
                duration_ms=round(elapsed_s * 1000, 3),
                reason=exc.reason if isinstance(exc, DomainError) else None,
            )
        else:
            self._log.error(
                "rpc failed",
                grpc_method=method.full_name,
                grpc_code=code_name,
                duration_ms=round(elapsed_s * 1000, 3),
                exc_info=exc,
            )


class InterceptingRegistrar:
    """Stands in for a ``grpc.aio.Server`` while servicers register, and registers each
    method handler already wrapped by a :class:`ServerInterceptor`.

    The same wrapper as the interceptor API's, applied once at registration instead of
    per call: with an interceptor installed, grpc.aio runs an interceptor chain on every
    call (a call-details object, two coroutines, a generic-handler lookup) before it
    reaches the handler (2–20 µs per call in two `core-layers` runs on this shared
    machine, docs/benchmarks.md: small, within the noise of one run);
    with pre-wrapped handlers it dispatches straight to the registered method, as a bare
    server does.

    Generated ``add_XServicer_to_server`` functions call ``add_generic_rpc_handlers``
    then ``add_registered_method_handlers`` with the same handlers: the generic one is
    held back and replaced by one built from the wrapped handlers. A generic handler
    never followed by its registered handlers is wrapped per lookup by :meth:`finish`,
    so nothing registered through the registrar escapes the interceptor.
    """

    def __init__(self, server: grpc.aio.Server, interceptor: ServerInterceptor) -> None:
        self._server = server
        self._interceptor = interceptor
        self._pending: dict[str, _GenericHandler] = {}
        self._anonymous: list[_GenericHandler] = []

    def add_generic_rpc_handlers(self, generic_rpc_handlers: tuple[_GenericHandler, ...]) -> None:
        for handler in generic_rpc_handlers:
            service_name = getattr(handler, "service_name", None)
            if service_name is None:
                self._anonymous.append(handler)
            else:
                self._pending[service_name()] = handler

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        wrapped = {
            method: self._interceptor.wrap_handler(f"/{service_name}/{method}", handler)
            for method, handler in method_handlers.items()
        }
        self._pending.pop(service_name, None)
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service_name, wrapped),)
        )
        self._server.add_registered_method_handlers(  # type: ignore[attr-defined]
            service_name, wrapped
        )

    def finish(self) -> None:
        """Registers what came only as generic handlers, wrapped at lookup time."""
        rest = [*self._pending.values(), *self._anonymous]
        self._pending.clear()
        self._anonymous.clear()
        if rest:
            self._server.add_generic_rpc_handlers(
                tuple(_InterceptedGenericHandler(h, self._interceptor) for h in rest)
            )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class _InterceptedGenericHandler(_GenericHandler):
    """A generic handler whose method handlers come back wrapped (cached per method)."""

    def __init__(self, inner: _GenericHandler, interceptor: ServerInterceptor) -> None:
        self._inner = inner
        self._interceptor = interceptor
        self._wrapped: dict[str, tuple[_Handler, _Handler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> _Handler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        full_name = handler_call_details.method
        cached = self._wrapped.get(full_name)
        if cached is None or cached[0] is not handler:
            cached = (handler, self._interceptor.wrap_handler(full_name, handler))
            self._wrapped[full_name] = cached
        return cached[1]
