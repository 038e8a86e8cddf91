"""The LangGraph store, the rules that need no database: namespace paths and keys,
which text of an item is embedded, and what a search filter asks for.

A namespace is a path of labels (``("users", "u1", "prefs")``); ``*`` stands for any
one label where a namespace is matched, so it is no label of its own. Filters follow
LangGraph's stores: a plain value must be contained in the item's field, a
``{"$gt": 3}``-style object compares the field with the value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from langgraph.store.base.embed import get_text_at_path, tokenize_path

from agentmesh.core.errors import InvalidArgument
from agentmesh.core.validation import Violations

MAX_LABELS: Final = 32
"""Labels per namespace path (not resource labels, see ``core.validation.MAX_LABELS``)."""
MAX_LABEL_CHARS: Final = 256
MAX_KEY_CHARS: Final = 1024
MAX_INDEX_FIELDS: Final = 32
MAX_FILTER_TERMS: Final = 32
"""Most conditions one ``filter_json`` makes (a field, or one operator of a field):
each is a bound parameter or two, so a filter stays far below PostgreSQL's limit."""
NO_INDEX: Final = "$none"
"""``index_fields`` of an item that is not to be embedded."""
WILDCARD: Final = "*"
COMPARISONS: Final = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")
"""The comparison operators of a filter, as LangGraph's stores take them."""


def check_namespace(
    labels: Sequence[str],
    violations: Violations,
    *,
    field: str,
    required: bool,
    wildcard: bool = False,
) -> None:
    """A namespace path: at most ``MAX_LABELS`` labels (at least one if ``required``),
    none empty, each at most ``MAX_LABEL_CHARS`` characters without NUL, and ``*`` only
    where it is a wildcard (it would otherwise be ambiguous with one). Adds the first
    problem found, if any."""
    problem = _namespace_problem(labels, field, required=required, wildcard=wildcard)
    if problem is not None:
        violations.add(*problem)


def _namespace_problem(
    labels: Sequence[str], field: str, *, required: bool, wildcard: bool
) -> tuple[str, str] | None:
    if required and not labels:
        return field, "at least one label is required"
    if len(labels) > MAX_LABELS:
        return field, f"at most {MAX_LABELS} labels"
    for i, label in enumerate(labels):
        if not label:
            return f"{field}[{i}]", "labels must not be empty"
        if len(label) > MAX_LABEL_CHARS or "\x00" in label:
            return f"{field}[{i}]", f"at most {MAX_LABEL_CHARS} characters, no NUL"
        if label == WILDCARD and not wildcard:
            return f"{field}[{i}]", "`*` is not a valid label here"
    return None


def check_key(key: str, violations: Violations, *, field: str = "key") -> None:
    """An item key: required, at most ``MAX_KEY_CHARS`` characters, no NUL."""
    if not key:
        violations.add(field, "required")
    elif len(key) > MAX_KEY_CHARS or "\x00" in key:
        violations.add(field, f"at most {MAX_KEY_CHARS} characters, no NUL")


def check_index_fields(index_fields: Sequence[str]) -> None:
    """``index_fields``: at most ``MAX_INDEX_FIELDS`` JSON paths as LangGraph reads them,
    or ``$none`` alone. INVALID_ARGUMENT on the first bad one."""
    if len(index_fields) > MAX_INDEX_FIELDS:
        raise InvalidArgument("index_fields", f"at most {MAX_INDEX_FIELDS} paths")
    for i, path in enumerate(index_fields):
        if not path or len(path) > MAX_LABEL_CHARS:
            raise InvalidArgument(f"index_fields[{i}]", "a JSON path of 1-256 characters")
        if path == NO_INDEX and len(index_fields) > 1:
            raise InvalidArgument("index_fields", "`$none` must be the only entry")
        if any(token.startswith("[") and not token.endswith("]") for token in tokenize_path(path)):
            raise InvalidArgument(f"index_fields[{i}]", f"{path!r} is not a JSON path")


def index_text(value: dict[str, Any], index_fields: Sequence[str]) -> str | None:
    """The text to embed for ``value``: the texts at ``index_fields`` (the whole document
    when there are none), one per line; None when the item is not to be indexed
    (``$none``, or no text at those paths)."""
    if list(index_fields) == [NO_INDEX]:
        return None
    texts = [text for path in index_fields or ["$"] for text in get_text_at_path(value, path)]
    joined = "\n".join(texts)
    return joined if joined.strip() else None


@dataclass(frozen=True)
class Contains:
    """The item's ``field`` contains ``value`` (JSON containment: equal scalars, a
    sub-object, a subset of an array)."""

    field: str
    value: Any


@dataclass(frozen=True)
class Compare:
    """The item's ``field`` compared with ``operand`` by ``operator`` (one of
    ``COMPARISONS``). ``$eq``/``$ne`` compare any JSON values; the ordering operators
    hold only between values of the same JSON type."""

    field: str
    operator: str
    operand: Any


FilterTerm = Contains | Compare
"""One condition of a search filter; an item matches when it meets all of them."""


def filter_terms(filter_: dict[str, Any]) -> list[FilterTerm]:
    """A ``filter_json`` object as conditions, in order: a field whose expected value is
    a non-empty object of ``$``-keys is compared once per operator; any other value must
    be contained. INVALID_ARGUMENT on ``filter_json`` for an unknown operator."""
    terms: list[FilterTerm] = []
    for field, expected in filter_.items():
        if isinstance(expected, dict) and expected and all(k.startswith("$") for k in expected):
            for operator, operand in expected.items():
                if operator not in COMPARISONS:
                    raise InvalidArgument(
                        "filter_json",
                        f"unknown operator {operator!r} (use {', '.join(COMPARISONS)})",
                    )
                terms.append(Compare(field, operator, operand))
        else:
            terms.append(Contains(field, expected))
    if len(terms) > MAX_FILTER_TERMS:
        raise InvalidArgument(
            "filter_json", f"{len(terms)} conditions; at most {MAX_FILTER_TERMS}: narrow the filter"
        )
    return terms
