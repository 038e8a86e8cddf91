"""Opaque page tokens (AIP-158) and page-size rules shared by every List method.

A token carries the position to continue from plus a fingerprint of the query
(filter, order) it was issued for, so a token reused with another filter, or a
token a client made up, is INVALID_ARGUMENT instead of silently wrong results.
Tokens are base64url JSON: opaque to clients by contract, debuggable by us.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

from agentmesh.core.errors import InvalidArgument

MAX_PAGE_SIZE: Final = 1000


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


def encode_page_token(position: Mapping[str, Any], query: Mapping[str, str]) -> str:
    """Encodes where the next page starts, bound to the query that produced it."""
    payload = {"p": dict(position), "q": _fingerprint(query)}
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(
    token: str, query: Mapping[str, str], *, field: str = "page_token"
) -> dict[str, Any] | None:
    """Returns the position of ``token`` (None for the first page).

    Raises InvalidArgument when the token is malformed or was issued for another query.
    """
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidArgument(field, "not a page token issued by this method") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("p"), dict):
        raise InvalidArgument(field, "not a page token issued by this method")
    if payload.get("q") != _fingerprint(query):
        raise InvalidArgument(
            field, "the page token was issued for a different filter or order; start over"
        )
    position: dict[str, Any] = payload["p"]
    return position
