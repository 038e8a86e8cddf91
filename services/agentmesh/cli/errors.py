"""How a failed call reads at a terminal: one line with the code, the message and the
details a person can act on (field violations, the error's reason, when to retry)."""

from __future__ import annotations

from typing import cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

EXIT_FAILED = 1
"""A call failed (the mesh answered an error, or could not be reached)."""
EXIT_USAGE = 2
"""The command line or the local configuration is wrong; nothing was called."""
EXIT_JOB_UNSUCCESSFUL = 3
"""``jobs watch``: the job ended FAILED or CANCELLED."""


class CliError(Exception):
    """A failure that is not a gRPC error but ends the command with ``EXIT_FAILED``."""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _details(error: grpc.Call) -> list[str]:
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # trailers that disagree with the call's own code or message
        return []
    if status is None:
        return []
    notes: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            notes.extend(f"{v.field}: {_one_line(v.description)}" for v in bad.field_violations)
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            notes.extend(
                f"{v.subject or v.type}: {_one_line(v.description)}" for v in failure.violations
            )
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.reason and info.reason != error.code().name:
                notes.append(f"reason {info.reason}")
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay_s = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
            notes.append(f"retry in {delay_s:g} s")
    return notes


def describe(error: grpc.RpcError, *, hint: str = "") -> str:
    """One line for a failed call: ``CODE: message [detail; detail] (hint)``."""
    call = cast(grpc.Call, error)
    code = call.code()
    line = f"{code.name}: {_one_line(call.details() or '')}"
    notes = _details(call)
    if notes:
        line += f" [{'; '.join(notes)}]"
    if hint:
        line += f" ({hint})"
    return line


def code_name(code: int) -> str:
    """The name of a ``google.rpc.Code`` number (the same numbers as gRPC's codes)."""
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.name
    return str(code)


def code_of(error: grpc.RpcError) -> grpc.StatusCode:
    """The status code of a failed call (grpc's errors are also ``grpc.Call``s)."""
    return cast(grpc.Call, error).code()
