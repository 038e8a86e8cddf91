"""A failed call reads as one line: code, message, field violations, reason, retry."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from agentmesh.cli.errors import code_name, describe


class FailedCall(grpc.RpcError, grpc.Call):
    """A failed call carrying a google.rpc.Status in its trailers, as grpc raises it."""

    def __init__(self, status: status_pb2.Status) -> None:
        self._status = rpc_status.to_status(status)

    def code(self) -> grpc.StatusCode:
        return self._status.code

    def details(self) -> str:
        return self._status.details

    def trailing_metadata(self) -> Any:
        return tuple(self._status.trailing_metadata)


def packed(message: object) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(message)  # type: ignore[arg-type]
    return detail


def test_field_violations_reason_and_retry_delay_are_on_the_line() -> None:
    status = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT,
        message="bad filter\non two lines",
        details=[
            packed(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field="filter", description="unknown state BOGUS"
                        )
                    ]
                )
            ),
            packed(error_details_pb2.ErrorInfo(reason="BAD_FILTER", domain="agentmesh.dev")),
            packed(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2))),
        ],
    )
    line = describe(FailedCall(status), hint="a hint")
    assert line == (
        "INVALID_ARGUMENT: bad filter on two lines"
        " [filter: unknown state BOGUS; reason BAD_FILTER; retry in 2 s] (a hint)"
    )
    assert "\n" not in line


def test_a_call_without_details_is_code_and_message() -> None:
    status = status_pb2.Status(code=code_pb2.NOT_FOUND, message="no job jobs/x")
    assert describe(FailedCall(status)) == "NOT_FOUND: no job jobs/x"


def test_google_rpc_codes_are_named_as_grpc_names_them() -> None:
    assert code_name(code_pb2.FAILED_PRECONDITION) == "FAILED_PRECONDITION"
    assert code_name(999) == "999"
