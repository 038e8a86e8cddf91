"""Opaque page tokens (AIP-158) and page-size rules shared by every List method.

A token carries the position to continue from plus a fingerprint of the query
(filter, order) it was issued for, so a token reused with another filter, or a
token a client made up, is INVALID_ARGUMENT instead of silently wrong results.

Lists page by keyset: the position is the sort key of the last row sent, and the next
page starts after it. A :class:`Keyset` declares the key's column types once per list
and is the one place positions are encoded, decoded and checked (tokens are not
signed: a client can build one, so every value is checked before it reaches SQL).
Tokens are base64url JSON: opaque to clients by contract, debuggable by us.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

from agentmesh.core.errors import InvalidArgument

MAX_PAGE_SIZE: Final = 1000
_NOT_OURS: Final = "not a page token issued by this method"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_BIGINT: Final = 2**63
_MAX_KEY_CHARS: Final = 4096
"""Longest text value of a position: the longest sort key any list has (a checkpoint
namespace, at most 4096 characters)."""

R = TypeVar("R")


def page_size(requested: int, *, default: int, field: str = "page_size") -> int:
    """Applies AIP-158: 0 means the default, negative is an error, large is clamped."""
    if requested < 0:
        raise InvalidArgument(field, "must not be negative")
    if requested == 0:
        return default
    return min(requested, MAX_PAGE_SIZE)


def _fingerprint(query: Mapping[str, str]) -> str:
    canonical = json.dumps(dict(query), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode_page_token(position: Any, query: Mapping[str, str]) -> str:
    """Encodes ``position`` (JSON) bound to the query that produced it: the one token
    format, written by :meth:`Keyset.encode` (tests use it to build forged tokens)."""
    payload = {"p": position, "q": _fingerprint(query)}
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _check_query(payload: Mapping[str, Any], query: Mapping[str, str], field: str) -> None:
    if payload.get("q") != _fingerprint(query):
        raise InvalidArgument(
            field, "the page token was issued for a different filter or order; start over"
        )


class Keyset:
    """The position of one list's pages: the types of its sort key's values, in order
    (``str``, ``int`` or ``datetime``), e.g. ``Keyset(datetime, str)`` for lists ordered
    by create time, then id.

    Encoded as a JSON array in the token, datetimes as integer microseconds since the
    epoch (exact: PostgreSQL keeps microseconds); ints must fit a ``bigint``, text must
    be short and free of NUL, so a forged token is INVALID_ARGUMENT, never a database
    error.
    """

    def __init__(self, *types: type) -> None:
        unknown = [t for t in types if t not in (str, int, datetime)]
        if not types or unknown:
            raise TypeError(f"a keyset holds str, int and datetime values, not {unknown}")
        self.types = types

    def encode(self, values: Sequence[Any], query: Mapping[str, str]) -> str:
        """The token of the page after the row whose sort key is ``values``."""
        if len(values) != len(self.types):
            raise ValueError(f"expected {len(self.types)} values, got {len(values)}")
        position = [
            (value - _EPOCH) // _MICROSECOND if isinstance(value, datetime) else value
            for value in values
        ]
        return encode_page_token(position, query)

    def decode(
        self, token: str, query: Mapping[str, str], *, field: str = "page_token"
    ) -> tuple[Any, ...] | None:
        """The sort key a page starts after, typed as declared; None for the first page
        (no token). INVALID_ARGUMENT on ``field`` when the token is malformed, forged or
        was issued for another query."""
        if not token:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            payload = json.loads(raw)
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise InvalidArgument(field, _NOT_OURS) from None
        if not isinstance(payload, dict):
            raise InvalidArgument(field, _NOT_OURS)
        position = payload.get("p")
        if not isinstance(position, list) or len(position) != len(self.types):
            raise InvalidArgument(field, _NOT_OURS)
        _check_query(payload, query, field)
        return tuple(
            _typed(value, kind, field) for value, kind in zip(position, self.types, strict=True)
        )

    def page(
        self,
        rows: Sequence[R],
        size: int,
        query: Mapping[str, str],
        key: Callable[[R], Sequence[Any]],
        *,
        budget: int | None = None,
        item_bytes: Callable[[R], int] | None = None,
    ) -> tuple[Sequence[R], str]:
        """Splits rows fetched with ``LIMIT size + 1`` (the extra row says another page
        exists) into the page to send and the token of the next one ("" at the end).
        With a ``budget``, the page also stops at that many bytes (:func:`fit_page`,
        each row's size from ``item_bytes``) and the next one continues from there."""
        if budget is None or item_bytes is None:
            page: Sequence[R] = rows[:size]
        else:
            page = fit_page(rows, limit=size, budget=budget, size=item_bytes)
        if len(rows) <= len(page) or not page:
            return page, ""
        return page, self.encode(key(page[-1]), query)


def _typed(value: Any, kind: type, field: str) -> Any:
    """One position value as ``kind``, checked; INVALID_ARGUMENT when it is not one."""
    if kind is str and isinstance(value, str):
        if len(value) <= _MAX_KEY_CHARS and "\x00" not in value:
            return value
    elif isinstance(value, int) and not isinstance(value, bool) and -_BIGINT <= value < _BIGINT:
        if kind is int:
            return value
        if kind is datetime:
            try:
                return _EPOCH + value * _MICROSECOND
            except OverflowError:
                pass
    raise InvalidArgument(field, _NOT_OURS)


def fit_page(rows: Sequence[R], *, limit: int, budget: int, size: Callable[[R], int]) -> list[R]:
    """The page of ``rows`` to send: at most ``limit`` leading rows whose ``size``\\ s add
    up to at most ``budget`` bytes, and always the first (a single item larger than the
    budget is sent alone; per-item limits keep it under the message limit). A list
    fetches ``limit + 1`` rows (through :func:`agentmesh.core.sql.byte_budgeted`); when
    the page is shorter than what came back, there is a next page, starting after the
    page's last row."""
    page: list[R] = []
    total = 0
    for row in rows[:limit]:
        total += size(row)
        if page and total > budget:
            break
        page.append(row)
    return page
