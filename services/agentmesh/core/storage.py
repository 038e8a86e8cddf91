"""Conversions between wire types and PostgreSQL storage types, shared by every service
that keeps records: timestamps, Structs as ``jsonb``, and JSON as ``jsonb`` takes it."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any, Final

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from agentmesh.core.errors import InvalidArgument
from agentmesh.core.names import ResourcePattern

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A PostgreSQL ``timestamptz`` as a protobuf Timestamp (None stays None).

    Computed from the exact timedelta since the epoch (microsecond precision, what
    PostgreSQL stores): a fifth of ``Timestamp.FromDatetime``'s cost, and every
    response carries two or three of these per resource.
    """
    if value is None:
        return None
    delta = value - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000
    )


def from_timestamp(value: timestamp_pb2.Timestamp) -> datetime:
    """A protobuf Timestamp as an aware datetime."""
    return value.ToDatetime(tzinfo=UTC)


def struct_to_json(value: struct_pb2.Struct, *, field: str, max_bytes: int) -> str:
    """A Struct as compact JSON text for a ``jsonb`` column, size-checked."""
    text = json.dumps(json_format.MessageToDict(value), separators=(",", ":"), sort_keys=True)
    if len(text.encode()) > max_bytes:
        raise InvalidArgument(field, f"larger than {max_bytes} bytes as JSON")
    return text


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(key) or _has_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


def struct_to_jsonb(value: struct_pb2.Struct, *, field: str, max_bytes: int) -> str:
    """:func:`struct_to_json`, refusing as INVALID_ARGUMENT what ``jsonb`` would reject
    (as INTERNAL): NaN and infinities (not JSON) and NUL in strings (``\\u0000``)."""
    try:
        text = struct_to_json(value, field=field, max_bytes=max_bytes)
    except (ValueError, json_format.Error) as exc:  # "Fail to serialize NaN ..."
        raise InvalidArgument(field, f"not representable as JSON: {exc}") from None
    if _has_nul(json.loads(text)):
        raise InvalidArgument(field, "must not contain NUL characters")
    return text


def json_to_struct(value: str | dict[str, Any] | None) -> struct_pb2.Struct:
    """A ``jsonb`` object (asyncpg returns text) as a Struct.

    ``Struct.update`` takes JSON-shaped values as they are (twice as fast as
    ``json_format.ParseDict``); the empty object, the common case, costs nothing.
    """
    message = struct_pb2.Struct()
    if value is None or value == "{}":
        return message
    message.update(json.loads(value) if isinstance(value, str) else value)
    return message


def optional_ref(name: str, pattern: ResourcePattern, *, field: str) -> str | None:
    """The id of an optional reference such as ``sessions/{id}``: None (NULL) when the
    name is empty; INVALID_ARGUMENT when it is not a name of ``pattern``."""
    return pattern.parse(name, field=field) if name else None


MAX_JSON_DEPTH: Final = 64
"""Deepest nesting of objects and arrays a JSON value may have."""
_NOT_STORABLE: Final = re.compile("[\x00\ud800-\udfff]")
"""Characters ``jsonb`` cannot store: NUL, and UTF-16 surrogates a ``\\ud800``-style
escape yields when it is not half of a pair (not Unicode text at all)."""


def _check_json_strings(value: Any, field: str) -> None:
    """Every key and string of a parsed JSON value storable, nesting at most
    ``MAX_JSON_DEPTH``; iterative, so a hostile depth costs no recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise InvalidArgument(field, f"nested deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_json_text(key, field)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            _check_json_text(item, field)


def _check_json_text(text: str, field: str) -> None:
    found = _NOT_STORABLE.search(text)
    if found is None:
        return
    if found.group() == "\x00":
        raise InvalidArgument(field, "must not contain NUL characters (\\u0000)")
    raise InvalidArgument(
        field, "must not contain lone surrogates (\\ud800-\\udfff escapes not in a pair)"
    )


def check_json_value(value: Any, *, field: str) -> None:
    """A parsed JSON value as ``jsonb`` stores it: nested at most ``MAX_JSON_DEPTH``, no
    NUL and no lone surrogate in its keys and strings; INVALID_ARGUMENT on ``field``."""
    _check_json_strings(value, field)


def json_object(text: str, *, field: str, max_bytes: int) -> dict[str, Any]:
    """JSON object text as a ``jsonb`` column takes it: at most ``max_bytes`` (UTF-8),
    strict JSON (no ``NaN``/``Infinity``), an object nested at most ``MAX_JSON_DEPTH``,
    no NUL (``\\u0000``) and no lone surrogate in its keys and strings, which ``jsonb``
    cannot store. INVALID_ARGUMENT on ``field`` otherwise."""
    if len(text.encode()) > max_bytes:
        raise InvalidArgument(field, f"larger than {max_bytes} bytes")

    def reject_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(text, parse_constant=reject_constant)
    except ValueError as exc:
        raise InvalidArgument(field, f"not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidArgument(field, f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(value, dict):
        raise InvalidArgument(field, "must be a JSON object")
    _check_json_strings(value, field)
    return value
