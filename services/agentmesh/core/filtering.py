"""A small AIP-160 filter language: conjunctions of ``field op value`` terms.

Enough for every List method of agentmesh.v1 (labels, state, references, time
ranges) without the ambiguity of a full expression language:

    labels.channel = "web" AND create_time >= "2026-01-01T00:00:00Z" AND state = RUNNING

Values are double-quoted strings (with ``\\"`` escapes), bare words (enum names,
``true``/``false``) or numbers. Each service declares which fields and operators
it accepts; anything else is INVALID_ARGUMENT on ``filter`` with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from agentmesh.core.errors import InvalidArgument

OPERATORS: Final = ("<=", ">=", "!=", "=", "<", ">")
MAX_FILTER_CHARS: Final = 2048
"""Longest filter text: every List method's useful filters are a few terms."""
MAX_FILTER_TERMS: Final = 32
"""Most terms of one filter: each becomes a condition and a bound parameter or two,
so a filter can neither build an unbounded statement nor pass PostgreSQL's limit of
parameters (32,767)."""

_TERM = re.compile(
    r"""\s*(?P<field>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)?)\s*
        (?P<op><=|>=|!=|=|<|>)\s*
        (?P<value>"(?:[^"\\]|\\.)*"|[A-Za-z0-9_.:+-]+)\s*""",
    re.VERBOSE,
)
_AND = re.compile(r"\s+AND\s+")


@dataclass(frozen=True, slots=True)
class Term:
    """One comparison of a filter."""

    field: str
    """The field, e.g. ``labels.channel`` or ``state``."""
    op: str
    """One of ``OPERATORS``."""
    value: str
    """The value, unquoted."""

    @property
    def key(self) -> str:
        """For a dotted field (``labels.channel``), the part after the dot."""
        return self.field.split(".", 1)[1] if "." in self.field else ""


@dataclass(frozen=True, slots=True)
class FieldRule:
    """What a service accepts for one field: its operators and a value check."""

    operators: frozenset[str]
    """Allowed operators."""
    check: Callable[[str], object] | None = None
    """Raises ValueError when a value is not acceptable (e.g. a bad timestamp)."""


def timestamp_value(value: str) -> datetime:
    """Parses an RFC 3339 timestamp with a zone; raises ValueError otherwise."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("timestamp needs a time zone, e.g. Z")
    return parsed


def boolean_value(value: str) -> bool:
    """Parses ``true`` / ``false``; raises ValueError otherwise."""
    if value not in ("true", "false"):
        raise ValueError("expected true or false")
    return value == "true"


EQUALITY: Final = frozenset({"="})
TIME_RANGE: Final = FieldRule(frozenset({"<", "<=", ">", ">=", "="}), timestamp_value)
BOOLEAN: Final = FieldRule(EQUALITY, boolean_value)


def parse_filter(text: str, rules: Mapping[str, FieldRule], *, field: str = "filter") -> list[Term]:
    """Parses ``text`` into terms, checking each against ``rules``.

    ``rules`` is keyed by field name; a key ending in ``.*`` (``labels.*``) accepts
    any sub-key. Raises InvalidArgument naming ``field`` with what is wrong.
    """
    if not text.strip():
        return []
    if len(text) > MAX_FILTER_CHARS:
        raise InvalidArgument(field, f"{len(text)} characters; at most {MAX_FILTER_CHARS}")
    chunks = _AND.split(text.strip())
    if len(chunks) > MAX_FILTER_TERMS:
        raise InvalidArgument(field, f"{len(chunks)} terms; at most {MAX_FILTER_TERMS}")
    terms: list[Term] = []
    for chunk in chunks:
        match = _TERM.fullmatch(chunk)
        if match is None:
            raise InvalidArgument(
                field, f"cannot parse {chunk.strip()!r}: expected field op value, joined by AND"
            )
        raw = match["value"]
        value = _unquote(raw) if raw.startswith('"') else raw
        term = Term(match["field"], match["op"], value)
        rule = rules.get(term.field) or (
            rules.get(term.field.split(".", 1)[0] + ".*") if "." in term.field else None
        )
        if rule is None:
            allowed = ", ".join(sorted(rules))
            raise InvalidArgument(field, f"unknown field {term.field!r}; filterable: {allowed}")
        if term.op not in rule.operators:
            ops = " ".join(sorted(rule.operators))
            raise InvalidArgument(field, f"{term.field} does not support {term.op!r}; use {ops}")
        if rule.check is not None:
            try:
                rule.check(term.value)
            except ValueError as exc:
                raise InvalidArgument(field, f"{term.field}: bad value {value!r}: {exc}") from None
        terms.append(term)
    return terms


def _unquote(raw: str) -> str:
    return re.sub(r"\\(.)", r"\1", raw[1:-1])
