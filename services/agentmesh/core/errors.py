# The names mirror the gRPC codes they stand for (NotFound ⇄ NOT_FOUND), which reads
# better in servicers than an "Error" suffix on each.
# ruff: noqa: N818
"""Typed domain errors and their mapping to ``google.rpc.Status`` with rich details.

Servicers and use cases raise these; the server interceptor turns them into a gRPC
status whose ``grpc-status-details-bin`` trailer carries ``ErrorInfo`` (machine-readable
``reason`` in ``domain="agentmesh.dev"``), ``RequestInfo`` (the request id) and the
detail type of the error (``BadRequest``, ``ResourceInfo``, ``PreconditionFailure``,
``RetryInfo``). Envoy's transcoder turns the same status into an HTTP code + JSON body.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar, Final

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message

# googleapis-common-protos ships .pyi files but no py.typed marker.
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN: Final = "agentmesh.dev"


class DomainError(Exception):
    """Base of every error a servicer may raise on purpose.

    ``reason`` is a stable UPPER_SNAKE identifier clients may branch on; ``message`` is
    for humans and may change.
    """

    # Subclasses set their code; a bare DomainError is a bug and reports as INTERNAL.
    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    def __init__(
        self, message: str, *, reason: str, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.metadata: Mapping[str, str] = metadata or {}

    def details(self) -> Sequence[Message]:
        """Detail messages specific to this error, beside ``ErrorInfo``/``RequestInfo``."""
        return ()


class InvalidArgument(DomainError):
    """The request is malformed; says which fields and why (``BadRequest``)."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(
        self, field_or_violations: str | Sequence[tuple[str, str]], description: str = ""
    ) -> None:
        if isinstance(field_or_violations, str):
            self.violations: tuple[tuple[str, str], ...] = ((field_or_violations, description),)
        else:
            self.violations = tuple(field_or_violations)
        summary = "; ".join(f"{field}: {why}" for field, why in self.violations)
        super().__init__(f"invalid argument: {summary}", reason="INVALID_ARGUMENT")

    def details(self) -> Sequence[Message]:
        return (
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=field, description=why)
                    for field, why in self.violations
                ]
            ),
        )


class _ResourceError(DomainError):
    """An error about one named resource (``ResourceInfo``)."""

    _reason: ClassVar[str]
    _verb: ClassVar[str]

    def __init__(self, resource_type: str, resource_name: str) -> None:
        self.resource_type = resource_type
        self.resource_name = resource_name
        super().__init__(
            f"{resource_type} {resource_name!r} {self._verb}",
            reason=self._reason,
            metadata={"resource_type": resource_type, "resource_name": resource_name},
        )

    def details(self) -> Sequence[Message]:
        return (
            error_details_pb2.ResourceInfo(
                resource_type=self.resource_type,
                resource_name=self.resource_name,
                description=self.message,
            ),
        )


class NotFound(_ResourceError):
    """The named resource does not exist (for this tenant)."""

    code = grpc.StatusCode.NOT_FOUND
    _reason = "RESOURCE_NOT_FOUND"
    _verb = "not found"


class AlreadyExists(_ResourceError):
    """A resource with this name exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS
    _reason = "RESOURCE_ALREADY_EXISTS"
    _verb = "already exists"


class FailedPrecondition(DomainError):
    """The system is not in the state the call needs, e.g. cancelling a finished job.

    ``violations`` are ``(type, subject, description)`` triples for ``PreconditionFailure``.
    """

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(
        self, reason: str, message: str, violations: Sequence[tuple[str, str, str]] = ()
    ) -> None:
        self.violations = tuple(violations)
        super().__init__(message, reason=reason)

    def details(self) -> Sequence[Message]:
        if not self.violations:
            return ()
        return (
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type=kind, subject=subject, description=description
                    )
                    for kind, subject, description in self.violations
                ]
            ),
        )


class _RetryLater(DomainError):
    """An error the client may retry after ``retry_after_s`` (``RetryInfo``)."""

    def __init__(self, message: str, retry_after_s: float, *, reason: str) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message, reason=reason)

    def details(self) -> Sequence[Message]:
        fraction, whole = math.modf(max(self.retry_after_s, 0.0))
        delay = duration_pb2.Duration(seconds=int(whole), nanos=int(fraction * 1e9))
        return (error_details_pb2.RetryInfo(retry_delay=delay),)


class ResourceExhausted(_RetryLater):
    """A quota or rate limit was hit; ``RetryInfo`` tells the client when to come back."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(
        self, message: str, retry_after_s: float, *, reason: str = "RESOURCE_EXHAUSTED"
    ) -> None:
        super().__init__(message, retry_after_s, reason=reason)


class Unavailable(_RetryLater):
    """A dependency (database, cache, provider) cannot answer now; retrying later may
    work, so ``RetryInfo`` says when."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(
        self, message: str, retry_after_s: float = 1.0, *, reason: str = "DEPENDENCY_UNAVAILABLE"
    ) -> None:
        super().__init__(message, retry_after_s, reason=reason)


class DeadlineExceeded(DomainError):
    """The work took longer than this service allows it (a query over its statement
    timeout): the request's own cost, not an outage, so neither clients nor Envoy retry
    it as they would UNAVAILABLE."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class OutOfRange(DomainError):
    """A position past the end of what exists, e.g. a watch resumed after a change
    that never happened; the field says which (``BadRequest``)."""

    code = grpc.StatusCode.OUT_OF_RANGE

    def __init__(self, field: str, description: str) -> None:
        self.field = field
        super().__init__(f"{field}: {description}", reason="OUT_OF_RANGE")

    def details(self) -> Sequence[Message]:
        return (
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=self.field, description=self.message
                    )
                ]
            ),
        )


class Aborted(DomainError):
    """A concurrency conflict (e.g. an etag mismatch); the client may retry the sequence."""

    code = grpc.StatusCode.ABORTED

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, reason=reason)


class Unauthenticated(DomainError):
    """No valid credential; ``reason`` says what was wrong with it."""

    code = grpc.StatusCode.UNAUTHENTICATED

    def __init__(self, message: str, *, reason: str = "UNAUTHENTICATED") -> None:
        super().__init__(message, reason=reason)


class PermissionDenied(DomainError):
    """The caller is known but may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED

    def __init__(self, message: str, *, reason: str = "PERMISSION_DENIED") -> None:
        super().__init__(message, reason=reason)


class Unimplemented(DomainError):
    """A part of the API that exists in the contract but not yet in the code.

    ``what`` names the missing piece; ``tracked_in`` names the issue or planned work that
    will add it, so the client (and the next engineer) learns where to look.
    """

    code = grpc.StatusCode.UNIMPLEMENTED

    def __init__(self, what: str, *, tracked_in: str | None = None) -> None:
        message = f"{what} is not implemented yet"
        if tracked_in:
            message += f" (tracked in {tracked_in})"
        super().__init__(message, reason="NOT_IMPLEMENTED")


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _status_proto(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: Mapping[str, str],
    request_id: str,
    extra: Sequence[Message],
) -> status_pb2.Status:
    details = [
        _pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)),
        _pack(error_details_pb2.RequestInfo(request_id=request_id)),
        *(_pack(detail) for detail in extra),
    ]
    return status_pb2.Status(code=code.value[0], message=message, details=details)


def _status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: Mapping[str, str],
    request_id: str,
    extra: Sequence[Message],
) -> grpc.Status:
    return rpc_status.to_status(_status_proto(code, message, reason, metadata, request_id, extra))


def to_rpc_status(err: DomainError, request_id: str) -> grpc.Status:
    """The status a client receives for ``err``, details in ``grpc-status-details-bin``."""
    return _status(err.code, err.message, err.reason, err.metadata, request_id, err.details())


def to_status_proto(err: DomainError, request_id: str) -> status_pb2.Status:
    """``err`` as a ``google.rpc.Status`` message, for errors carried in a response
    (a stream's error event, a failed run's result) rather than as the call's status."""
    return _status_proto(err.code, err.message, err.reason, err.metadata, request_id, err.details())


def internal_status_proto(request_id: str) -> status_pb2.Status:
    """:func:`internal_status` as a ``google.rpc.Status`` message."""
    return _status_proto(
        grpc.StatusCode.INTERNAL,
        f"internal error (request_id={request_id})",
        "INTERNAL",
        {},
        request_id,
        (),
    )


def internal_status(request_id: str) -> grpc.Status:
    """The status for an unexpected exception: INTERNAL, nothing leaked but the request id.

    The request id in the message lets an operator find the logged stack trace.
    """
    return _status(
        grpc.StatusCode.INTERNAL,
        f"internal error (request_id={request_id})",
        "INTERNAL",
        {},
        request_id,
        (),
    )
