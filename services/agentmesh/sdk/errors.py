"""What a failed call says, the same way for both clients: the status code, the
``ErrorInfo`` reason to branch on, and the ``RequestInfo`` request id to quote."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpclib.exceptions import GRPCError

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class ErrorDetails:
    """One failed call, from a :class:`grpc.RpcError` or a grpclib ``GRPCError``."""

    code: str
    """The status code's name: ``NOT_FOUND``, ``UNAUTHENTICATED``, ``UNAVAILABLE``, …"""
    message: str
    reason: str = ""
    """``ErrorInfo.reason`` (stable, UPPER_SNAKE); empty when the error carries none
    (Envoy's own answers, transport failures)."""
    request_id: str = ""
    """``RequestInfo.request_id``: the ``x-request-id`` the call was served under."""
    details: Sequence[Message] = field(default=(), repr=False)
    """Every ``google.rpc`` detail (ErrorInfo, BadRequest, ResourceInfo, RetryInfo, …)."""


def _from_status(data: bytes) -> list[Message]:
    status = status_pb2.Status.FromString(data)
    details: list[Message] = []
    for packed in status.details:
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.RequestInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.ResourceInfo,
            error_details_pb2.PreconditionFailure,
            error_details_pb2.RetryInfo,
            error_details_pb2.QuotaFailure,
        ):
            detail = kind()
            if packed.Unpack(detail):  # False: another kind
                details.append(detail)
                break
    return details


def error_details(error: grpc.RpcError | GRPCError) -> ErrorDetails:
    """The code, reason, request id and details of a failed call of either client."""
    details: Sequence[Any]
    if isinstance(error, GRPCError):
        code, message = error.status.name, error.message or ""
        details = [d for d in (error.details or ()) if isinstance(d, Message)]
    else:
        call: Any = error  # a failed grpcio call is also a grpc.Call
        code, message = call.code().name, call.details() or ""
        raw = dict(call.trailing_metadata() or ()).get(_STATUS_DETAILS_KEY)
        details = _from_status(raw) if isinstance(raw, bytes) else []
    reason = request_id = ""
    for detail in details:
        if isinstance(detail, error_details_pb2.ErrorInfo):
            reason = detail.reason
        elif isinstance(detail, error_details_pb2.RequestInfo):
            request_id = detail.request_id
    return ErrorDetails(code, message, reason, request_id, tuple(details))
