"""Requests that are not valid protobuf are the client's mistake: INVALID_ARGUMENT.

grpc runs a method's request deserializer before any handler code; when it raises
(corrupt wire format, a string field that is not UTF-8, such as a lone surrogate
encoded by a careless client), grpc answers UNKNOWN with the exception's text. The
interceptor registers every unary-request method with :func:`tolerant`, which turns a
decode failure into a :class:`MalformedRequest` value; the wrapped handler refuses it
with :func:`refuse_malformed` after authentication, as INVALID_ARGUMENT with a field
violation on ``request``, logged and counted like any other refusal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from agentmesh.core.errors import InvalidArgument

Deserializer = Callable[[bytes], Any]


@dataclass(frozen=True, slots=True)
class MalformedRequest:
    """Stands in for a request whose bytes did not decode."""

    type_name: str
    error: str


def tolerant(deserializer: Deserializer | None) -> Deserializer | None:
    """``deserializer``, returning a :class:`MalformedRequest` instead of raising."""
    if deserializer is None:
        return None
    inner = deserializer
    type_name = getattr(getattr(inner, "__self__", None), "DESCRIPTOR", None)
    name = type_name.full_name if type_name is not None else "the request message"

    def decode(data: bytes) -> Any:
        try:
            return inner(data)
        except (DecodeError, UnicodeDecodeError) as exc:
            return MalformedRequest(name, str(exc) or type(exc).__name__)

    return decode


def refuse_malformed(request: Any) -> None:
    """Raises INVALID_ARGUMENT when ``request`` did not decode."""
    if isinstance(request, MalformedRequest):
        reason = request.error.split(": ")[-1]
        hint = " (strings must be UTF-8, without lone surrogates)" if "UTF-8" in reason else ""
        raise InvalidArgument("request", f"not a valid {request.type_name}: {reason}{hint}")
