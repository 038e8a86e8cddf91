"""Domain errors map to the right gRPC code and ``google.rpc`` details."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from agentmesh.core.errors import (
    ERROR_DOMAIN,
    Aborted,
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unimplemented,
    internal_status,
    to_rpc_status,
)

pytestmark = pytest.mark.unit

_DETAIL_TYPES: tuple[type[Message], ...] = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.RequestInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.ResourceInfo,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.RetryInfo,
)


def decode(status: grpc.Status) -> tuple[status_pb2.Status, dict[type[Message], Message]]:
    """The rich status carried in the trailer, with its details unpacked by type."""
    (key, value), *rest = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    assert not rest
    assert isinstance(value, bytes)
    rich = status_pb2.Status.FromString(value)
    details: dict[type[Message], Message] = {}
    for packed in rich.details:
        kind = next(t for t in _DETAIL_TYPES if packed.TypeName() == t.DESCRIPTOR.full_name)
        message = kind()
        packed.Unpack(message)
        details[kind] = message
    return rich, details


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (InvalidArgument("page_size", "must be positive"), "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        (NotFound("agentmesh.v1.Session", "sessions/1"), "NOT_FOUND", "RESOURCE_NOT_FOUND"),
        (AlreadyExists("agentmesh.v1.Job", "jobs/7"), "ALREADY_EXISTS", "RESOURCE_ALREADY_EXISTS"),
        (FailedPrecondition("JOB_FINISHED", "job is done"), "FAILED_PRECONDITION", "JOB_FINISHED"),
        (ResourceExhausted("slow down", 1.5), "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"),
        (Aborted("ETAG_MISMATCH", "changed meanwhile"), "ABORTED", "ETAG_MISMATCH"),
        (Unauthenticated("no token"), "UNAUTHENTICATED", "UNAUTHENTICATED"),
        (PermissionDenied("not yours"), "PERMISSION_DENIED", "PERMISSION_DENIED"),
        (Unimplemented("Memory.SearchMemories"), "UNIMPLEMENTED", "NOT_IMPLEMENTED"),
    ],
)
def test_every_error_carries_code_message_error_info_and_request_id(
    error: DomainError, code: str, reason: str
) -> None:
    status = to_rpc_status(error, "req-1")
    rich, details = decode(status)

    assert status.code is grpc.StatusCode[code]
    assert rich.code == grpc.StatusCode[code].value[0]
    assert status.details == rich.message == error.message
    info = details[error_details_pb2.ErrorInfo]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == (reason, ERROR_DOMAIN)
    request_info = details[error_details_pb2.RequestInfo]
    assert isinstance(request_info, error_details_pb2.RequestInfo)
    assert request_info.request_id == "req-1"


def test_invalid_argument_lists_field_violations() -> None:
    error = InvalidArgument([("page_size", "must be positive"), ("filter", "unknown field x")])

    _, details = decode(to_rpc_status(error, "r"))

    bad_request = details[error_details_pb2.BadRequest]
    assert isinstance(bad_request, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("page_size", "must be positive"),
        ("filter", "unknown field x"),
    ]
    assert error.message == (
        "invalid argument: page_size: must be positive; filter: unknown field x"
    )


def test_not_found_names_the_resource() -> None:
    error = NotFound("agentmesh.v1.Session", "sessions/42")

    _, details = decode(to_rpc_status(error, "r"))

    resource = details[error_details_pb2.ResourceInfo]
    assert isinstance(resource, error_details_pb2.ResourceInfo)
    assert (resource.resource_type, resource.resource_name) == (
        "agentmesh.v1.Session",
        "sessions/42",
    )
    info = details[error_details_pb2.ErrorInfo]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert dict(info.metadata) == {
        "resource_type": "agentmesh.v1.Session",
        "resource_name": "sessions/42",
    }


def test_failed_precondition_lists_violations() -> None:
    error = FailedPrecondition(
        "JOB_NOT_RUNNING",
        "only running jobs can be cancelled",
        [("STATE", "jobs/1", "job is SUCCEEDED")],
    )

    _, details = decode(to_rpc_status(error, "r"))

    failure = details[error_details_pb2.PreconditionFailure]
    assert isinstance(failure, error_details_pb2.PreconditionFailure)
    assert [(v.type, v.subject, v.description) for v in failure.violations] == [
        ("STATE", "jobs/1", "job is SUCCEEDED")
    ]


def test_resource_exhausted_says_when_to_retry() -> None:
    _, details = decode(to_rpc_status(ResourceExhausted("quota", 2.25), "r"))

    retry = details[error_details_pb2.RetryInfo]
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert (retry.retry_delay.seconds, retry.retry_delay.nanos) == (2, 250_000_000)


def test_unimplemented_names_where_the_work_is_tracked() -> None:
    error = Unimplemented("filtering memories by tag", tracked_in="issue #12")

    assert (
        error.message == "filtering memories by tag is not implemented yet (tracked in issue #12)"
    )


def test_internal_status_leaks_nothing_but_the_request_id() -> None:
    status = internal_status("req-9")
    rich, details = decode(status)

    assert status.code is grpc.StatusCode.INTERNAL
    assert status.details == "internal error (request_id=req-9)"
    assert set(details) == {error_details_pb2.ErrorInfo, error_details_pb2.RequestInfo}
    assert rich.message == status.details
