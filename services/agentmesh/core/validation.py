"""Field validation that reports every bad field of a request at once.

A client mistake is INVALID_ARGUMENT with one ``BadRequest`` field violation per bad
field, never INTERNAL and never only the first problem. Validators are plain functions
that raise :class:`~agentmesh.core.errors.InvalidArgument` (usable alone); a
:class:`Violations` collects what several of them raise, plus checks written inline,
and raises them together. The checks every service's resources share (text bounds,
labels, display names, request ids) live here too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Final, TypeVar

from agentmesh.core.errors import InvalidArgument

T = TypeVar("T")

MAX_DISPLAY_NAME: Final = 256
"""Longest ``display_name`` of any resource, in characters."""
MAX_LABELS: Final = 64
"""Most labels one resource carries."""
MAX_REQUEST_ID: Final = 128
"""Longest ``request_id`` (idempotency key), in characters; a UUID is typical."""
NUL: Final = "\x00"
"""The character PostgreSQL's text and jsonb cannot hold: refused in any text stored."""
NUL_RULE: Final = "must not contain NUL characters"
_LABEL_KEY: Final = re.compile(r"^[a-z0-9_-]{1,63}$")
# The contract says "at most 63 characters", so an empty value is a valid label.
_LABEL_VALUE: Final = re.compile(r"^[a-z0-9_-]{0,63}$")


class Violations:
    """Collects field violations so one INVALID_ARGUMENT names every bad field."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def __bool__(self) -> bool:
        return bool(self.items)

    def add(self, field: str, description: str) -> None:
        """Records that ``field`` is wrong, and why."""
        self.items.append((field, description))

    def check(self, validate: Callable[[], T]) -> T | None:
        """Runs a validator that raises InvalidArgument; keeps its violations instead and
        returns None, else returns what the validator returned."""
        try:
            return validate()
        except InvalidArgument as exc:
            self.items.extend(exc.violations)
            return None

    def text(self, value: str, field: str, *, required: bool, max_chars: int) -> str:
        """Checks a text field PostgreSQL will store: present if required, at most
        ``max_chars`` characters, no NUL (which ``text`` columns cannot hold)."""
        if required and not value:
            self.add(field, "required")
        elif len(value) > max_chars:
            self.add(field, f"at most {max_chars} characters")
        elif NUL in value:
            self.add(field, NUL_RULE)
        return value

    def text_bytes(self, value: str, field: str, *, max_bytes: int) -> str:
        """Checks an optional text field bounded in UTF-8 bytes (what a row stores and a
        response carries) rather than characters: at most ``max_bytes`` bytes, no NUL."""
        if len(value.encode()) > max_bytes:
            self.add(field, f"larger than {max_bytes} bytes")
        elif NUL in value:
            self.add(field, NUL_RULE)
        return value

    def raise_if_any(self) -> None:
        """Raises one InvalidArgument naming every violation collected, if any."""
        if self.items:
            raise InvalidArgument(self.items)


def check_labels(labels: Mapping[str, str], violations: Violations, *, field: str) -> None:
    """Labels as every resource takes them: at most ``MAX_LABELS``, keys and values of
    lowercase letters, digits, ``_`` and ``-`` (keys 1-63, values 0-63 characters)."""
    if len(labels) > MAX_LABELS:
        violations.add(field, f"at most {MAX_LABELS} labels")
    for key, value in labels.items():
        where = f"{field}[{json.dumps(key)}]"
        if not _LABEL_KEY.fullmatch(key):
            violations.add(where, "key must be 1-63 characters of a-z, 0-9, '_' and '-'")
        if not _LABEL_VALUE.fullmatch(value):
            violations.add(where, "value must be at most 63 characters of a-z, 0-9, '_' and '-'")


def check_display_name(display_name: str, violations: Violations, *, field: str) -> None:
    """A display name: free text of at most ``MAX_DISPLAY_NAME`` characters."""
    if len(display_name) > MAX_DISPLAY_NAME:
        violations.add(field, f"at most {MAX_DISPLAY_NAME} characters")
    elif NUL in display_name:
        violations.add(field, NUL_RULE)


def validate_request_id(request_id: str, *, field: str = "request_id") -> str:
    """Request ids (idempotency keys) are opaque but bounded: at most
    ``MAX_REQUEST_ID`` printable characters."""
    if len(request_id) > MAX_REQUEST_ID or not request_id.isprintable():
        raise InvalidArgument(field, f"at most {MAX_REQUEST_ID} printable characters")
    return request_id


_MAX_DURATION_S: Final = 315_576_000_000
"""``google.protobuf.Duration``'s own bound: about 10,000 years."""


def check_duration(seconds: int, nanos: int, *, field: str, min_s: float, max_s: float) -> float:
    """A ``google.protobuf.Duration`` (its ``seconds`` and ``nanos``) as seconds, checked:
    a well-formed duration (nanos in range and of the seconds' sign) between ``min_s``
    and ``max_s``; INVALID_ARGUMENT on ``field`` otherwise. Conversions such as
    ``ToTimedelta`` overflow on what a client may send; nothing converts before this."""
    well_formed = (
        abs(seconds) <= _MAX_DURATION_S
        and -1_000_000_000 < nanos < 1_000_000_000
        and not (seconds > 0 and nanos < 0)
        and not (seconds < 0 and nanos > 0)
    )
    if not well_formed:
        raise InvalidArgument(field, "not a valid duration")
    total = seconds + nanos / 1e9
    if not min_s <= total <= max_s:
        raise InvalidArgument(field, f"must be between {min_s:g} s and {max_s:g} s")
    return total
