"""Conversions between wire types and storage types, shared by the RPC groups."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from agentmesh.core.errors import InvalidArgument


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A PostgreSQL ``timestamptz`` as a protobuf Timestamp (None stays None)."""
    if value is None:
        return None
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value.astimezone(UTC))
    return message


def from_timestamp(value: timestamp_pb2.Timestamp) -> datetime:
    """A protobuf Timestamp as an aware datetime."""
    return value.ToDatetime(tzinfo=UTC)


def struct_to_json(value: struct_pb2.Struct, *, field: str, max_bytes: int) -> str:
    """A Struct as compact JSON text for a ``jsonb`` column, size-checked."""
    text = json.dumps(json_format.MessageToDict(value), separators=(",", ":"), sort_keys=True)
    if len(text.encode()) > max_bytes:
        raise InvalidArgument(field, f"larger than {max_bytes} bytes as JSON")
    return text


def json_to_struct(value: str | dict[str, Any] | None) -> struct_pb2.Struct:
    """A ``jsonb`` value (asyncpg returns text) as a Struct."""
    message = struct_pb2.Struct()
    if value is None:
        return message
    json_format.ParseDict(json.loads(value) if isinstance(value, str) else value, message)
    return message


def etag(version: int) -> str:
    """The etag of a row version: opaque to clients, a quoted number for us (RFC 9110)."""
    return f'"{version}"'


def parse_etag(value: str, *, field: str = "etag") -> int:
    """The row version an etag names; a malformed etag is INVALID_ARGUMENT."""
    try:
        return int(value.strip('"'))
    except ValueError:
        raise InvalidArgument(field, f"{value!r} is not an etag issued by this service") from None
