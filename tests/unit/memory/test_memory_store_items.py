"""The LangGraph store, the rules that need no database: namespace paths and keys,
index fields and text, and how a search filter becomes conditions."""

from __future__ import annotations

import json

import pytest

from agentmesh.core.errors import InvalidArgument
from agentmesh.core.sql import Where
from agentmesh.core.validation import Violations
from agentmesh.memory.domain.store_items import (
    MAX_KEY_CHARS,
    MAX_LABEL_CHARS,
    MAX_LABELS,
    Compare,
    Contains,
    check_index_fields,
    check_key,
    check_namespace,
    filter_terms,
    index_text,
)
from agentmesh.memory.stores.store_items import add_filter, add_namespace_match

pytestmark = pytest.mark.unit


def _namespace(labels: list[str], **options: bool) -> list[tuple[str, str]]:
    found = Violations()
    check_namespace(labels, found, field="ns", required=options.pop("required", True), **options)
    return found.items


def test_a_namespace_of_plain_labels_is_fine() -> None:
    assert _namespace(["users", "u1", "prefs"]) == []
    assert _namespace([], required=False) == []


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ([], ("ns", "at least one label is required")),
        (["a"] * (MAX_LABELS + 1), ("ns", f"at most {MAX_LABELS} labels")),
        (["a", ""], ("ns[1]", "labels must not be empty")),
        (["a" * (MAX_LABEL_CHARS + 1)], ("ns[0]", f"at most {MAX_LABEL_CHARS} characters, no NUL")),
        (["a\x00b"], ("ns[0]", f"at most {MAX_LABEL_CHARS} characters, no NUL")),
        (["a", "*"], ("ns[1]", "`*` is not a valid label here")),
    ],
)
def test_a_bad_namespace_names_its_first_problem(
    labels: list[str], expected: tuple[str, str]
) -> None:
    assert _namespace(labels) == [expected]


def test_only_the_first_problem_of_a_namespace_is_reported() -> None:
    assert _namespace(["", "*"]) == [("ns[0]", "labels must not be empty")]


def test_star_is_a_wildcard_where_namespaces_are_matched() -> None:
    assert _namespace(["*", "u1"], required=False, wildcard=True) == []


def test_keys() -> None:
    for key, expected in [
        ("prefs", []),
        ("", [("key", "required")]),
        ("k" * (MAX_KEY_CHARS + 1), [("key", f"at most {MAX_KEY_CHARS} characters, no NUL")]),
        ("a\x00", [("key", f"at most {MAX_KEY_CHARS} characters, no NUL")]),
    ]:
        found = Violations()
        check_key(key, found)
        assert found.items == expected


@pytest.mark.parametrize(
    ("fields", "field", "why"),
    [
        (["a"] * 33, "index_fields", "at most 32 paths"),
        ([""], "index_fields[0]", "a JSON path of 1-256 characters"),
        (["text", "$none"], "index_fields", "`$none` must be the only entry"),
        (["items[0"], "index_fields[0]", "'items[0' is not a JSON path"),
    ],
)
def test_bad_index_fields(fields: list[str], field: str, why: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        check_index_fields(fields)
    assert list(raised.value.violations) == [(field, why)]


def test_index_text() -> None:
    value = {"title": "Trip", "notes": ["aisle seat", "vegetarian"], "n": 3}
    assert index_text(value, ["title"]) == "Trip"
    assert index_text(value, ["notes[*]"]) == "aisle seat\nvegetarian"
    assert index_text(value, ["$none"]) is None
    assert index_text(value, ["missing"]) is None
    assert index_text({"title": "  "}, ["title"]) is None  # nothing to embed
    whole = index_text(value, [])  # the whole document, as JSON
    assert whole is not None
    assert json.loads(whole) == value


def test_filter_terms() -> None:
    terms = filter_terms({"kind": "note", "n": {"$gt": 1, "$lte": 5}, "tags": {"a": 1}, "e": {}})
    assert terms == [
        Contains("kind", "note"),
        Compare("n", "$gt", 1),
        Compare("n", "$lte", 5),
        Contains("tags", {"a": 1}),  # an object of non-operators is contained
        Contains("e", {}),
    ]
    with pytest.raises(InvalidArgument) as raised:
        filter_terms({"n": {"$gt": 1, "$in": [1]}})
    assert list(raised.value.violations) == [
        ("filter_json", "unknown operator '$in' (use $eq, $ne, $gt, $gte, $lt, $lte)")
    ]


def test_filter_conditions_bind_every_value_as_a_parameter() -> None:
    where = Where("acme")
    add_filter(
        where,
        [
            Contains("kind", "note"),
            Compare("n", "$eq", 2),
            Compare("n", "$ne", None),
            Compare("n", "$gte", 1),
        ],
    )
    assert where.conditions == [
        "tenant = $1",
        "value @> $2::jsonb",
        "(value -> $3) = $4::jsonb",
        "(value -> $5) IS DISTINCT FROM $6::jsonb",
        "jsonb_typeof((value -> $7)) = jsonb_typeof($8::jsonb)",
        "(value -> $7) >= $8::jsonb",
    ]
    assert where.args == ["acme", json.dumps({"kind": "note"}), "n", "2", "n", "null", "n", "1"]


def test_namespace_matches_skip_wildcards() -> None:
    where = Where("acme")
    add_namespace_match(where, ["users", "*"], suffix=False)
    add_namespace_match(where, ["*", "prefs"], suffix=True)
    add_namespace_match(where, [], suffix=True)
    assert where.conditions == [
        "tenant = $1",
        "cardinality(namespace) >= 2",
        "namespace[1] = $2",
        "cardinality(namespace) >= 2",
        "namespace[cardinality(namespace) - 0] = $3",
    ]
    assert where.args == ["acme", "users", "prefs"]


def test_a_store_filter_is_bounded_in_conditions() -> None:
    assert len(filter_terms({f"k{i}": i for i in range(32)})) == 32
    for too_many in (
        {f"k{i}": i for i in range(33)},
        {f"k{i}": {"$gt": 1, "$lt": 9} for i in range(17)},
        {f"k{i}": i for i in range(40_000)},
    ):
        with pytest.raises(InvalidArgument) as raised:
            filter_terms(too_many)
        assert raised.value.violations[0][0] == "filter_json"
