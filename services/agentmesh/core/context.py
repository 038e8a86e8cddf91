"""Per-request context carried in ``contextvars``: request id, tenant, subject, credential.

The server interceptor binds one :class:`CallInfo` per RPC; grpc.aio runs every RPC in
its own task, so the binding is private to that call and to the tasks it spawns. One
ContextVar holding one small object keeps the hot path at a single ``set`` per call.
The trace id is not stored: it is read from the active OpenTelemetry span when asked for,
so calls that log nothing never pay for formatting it.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import NamedTuple

from opentelemetry import trace


class MissingCallContextError(LookupError):
    """Code that needs the caller's identity ran outside an authenticated RPC."""


class CallInfo(NamedTuple):
    """What the server interceptor learned about the current RPC.

    A NamedTuple: immutable like a frozen dataclass, at a third of the construction
    cost, which matters because one is built per call.
    """

    request_id: str
    """Caller's ``x-request-id`` or one generated for this call."""

    tenant: str | None = None
    """Tenant from the verified credential; None on unauthenticated methods (health)."""

    subject: str | None = None
    """``sub`` of the verified credential."""

    authorization: str | None = None
    """The raw ``authorization`` header, forwarded on calls to other services."""


_call: ContextVar[CallInfo | None] = ContextVar("agentmesh_call", default=None)
_job_id: ContextVar[str | None] = ContextVar("agentmesh_job_id", default=None)


def bind_call(
    request_id: str,
    *,
    tenant: str | None = None,
    subject: str | None = None,
    authorization: str | None = None,
) -> Token[CallInfo | None]:
    """Bind the current call; returns the token for callers that must restore it."""
    return _call.set(CallInfo(request_id, tenant, subject, authorization))


def reset_call(token: Token[CallInfo | None]) -> None:
    """Undo a :func:`bind_call` made in this same context."""
    _call.reset(token)


def bind_job_id(job_id: str | None) -> Token[str | None]:
    """Bind the job being worked on (worker middleware, Job servicer) for the logs."""
    return _job_id.set(job_id)


def reset_job_id(token: Token[str | None]) -> None:
    """Undo a :func:`bind_job_id` made in this same context."""
    _job_id.reset(token)


def current_call() -> CallInfo | None:
    """The bound call, or None outside an RPC."""
    return _call.get()


def current_request_id() -> str | None:
    """Request id of the current call, or None outside an RPC."""
    call = _call.get()
    return None if call is None else call.request_id


def current_tenant() -> str:
    """Tenant of the current call; every read and write must be scoped by it.

    Raises :class:`MissingCallContextError` when no authenticated call is bound: reaching
    tenant-scoped code without a tenant is a bug, never a reason to go unscoped.
    """
    call = _call.get()
    if call is None or call.tenant is None:
        raise MissingCallContextError("no tenant bound: not inside an authenticated RPC")
    return call.tenant


def current_subject() -> str | None:
    """Subject (``sub``) of the current call's credential, if any."""
    call = _call.get()
    return None if call is None else call.subject


def current_authorization() -> str | None:
    """Raw ``authorization`` header of the current call, to forward on outgoing calls."""
    call = _call.get()
    return None if call is None else call.authorization


def current_job_id() -> str | None:
    """Job bound by :func:`bind_job_id`, if any."""
    return _job_id.get()


def current_trace_id() -> str | None:
    """Hex trace id of the active OpenTelemetry span, or None when nothing is traced."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x")
