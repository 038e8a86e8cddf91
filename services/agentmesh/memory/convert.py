"""Conversions between wire types and storage types, shared by the RPC groups.

The generic ones (timestamps, Structs and JSON as ``jsonb``) live in
:mod:`agentmesh.core.storage`, shared with the other services; they are named here
too, so the groups keep one ``convert`` module to call."""

from __future__ import annotations

import re
from typing import Final
from uuid import UUID

from agentmesh.core.errors import InvalidArgument
from agentmesh.core.storage import (
    MAX_JSON_DEPTH,
    from_timestamp,
    json_object,
    json_to_struct,
    optional_ref,
    struct_to_json,
    struct_to_jsonb,
    timestamp,
)

__all__ = [
    "MAX_JSON_DEPTH",
    "etag",
    "from_timestamp",
    "json_object",
    "json_to_struct",
    "optional_ref",
    "parse_etag",
    "parse_session_etag",
    "session_etag",
    "struct_to_json",
    "struct_to_jsonb",
    "timestamp",
]

_MAX_VERSION: Final = 2**63 - 1  # a bigint column
_SESSION_ETAG: Final = re.compile(r"([0-9]{1,19})(?:-([0-9a-f]{32}))?")


def _not_an_etag(value: str, field: str) -> InvalidArgument:
    return InvalidArgument(field, f"{value!r} is not an etag issued by this service")


def etag(version: int) -> str:
    """The etag of a row version: opaque to clients, a quoted number for us (RFC 9110)."""
    return f'"{version}"'


def parse_etag(value: str, *, field: str = "etag") -> int:
    """The row version an etag names; a malformed etag is INVALID_ARGUMENT."""
    try:
        version = int(value.strip('"'))
    except ValueError:
        raise _not_an_etag(value, field) from None
    if abs(version) > _MAX_VERSION:  # would not fit the bigint it is compared with
        raise _not_an_etag(value, field)
    return version


def session_etag(version: int, incarnation: UUID) -> str:
    """The etag of a session: its version and the random id of its incarnation, so an
    etag read before the id was deleted and created again never matches the new
    session, whose version starts over. Opaque to clients; quoted (RFC 9110)."""
    return f'"{version}-{incarnation.hex}"'


def parse_session_etag(value: str, *, field: str = "etag") -> tuple[int, UUID | None]:
    """The (version, incarnation) a session etag names; INVALID_ARGUMENT when malformed.

    An etag of the earlier form, the version alone (``"3"``, issued before sessions
    had incarnations), is well-formed and names no incarnation (None): it can match
    no session any more, so a write conditional on it is the stale-etag conflict.
    """
    found = _SESSION_ETAG.fullmatch(value.strip('"'))
    if found is None or int(found[1]) > _MAX_VERSION:
        raise _not_an_etag(value, field)
    return int(found[1]), UUID(hex=found[2]) if found[2] else None
