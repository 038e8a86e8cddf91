"""Resource names, page tokens and filters: the shared request-parsing rules."""

from __future__ import annotations

import pytest

from agentmesh.core.errors import InvalidArgument
from agentmesh.core.filtering import EQUALITY, TIME_RANGE, FieldRule, parse_filter
from agentmesh.core.names import ID_PATTERN, SESSIONS, new_id, validate_id
from agentmesh.core.paging import MAX_PAGE_SIZE, Keyset, page_size


@pytest.mark.parametrize("name", ["sessions/a", "sessions/a-1", "sessions/" + "a" * 63])
def test_valid_names_parse_to_their_id(name: str) -> None:
    assert SESSIONS.parse(name) == name.split("/", 1)[1]


@pytest.mark.parametrize(
    "name",
    [
        "",
        "sessions/",
        "session/a",
        "sessions/A",
        "sessions/1a",
        "sessions/a-",
        "sessions/a/b",
        "sessions/" + "a" * 64,
        "sessions/a_b",
        "memories/a",
    ],
)
def test_malformed_names_are_invalid_argument_on_the_field(name: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        SESSIONS.parse(name, field="session.name")
    assert caught.value.violations[0][0] == "session.name"


def test_generated_ids_are_valid_and_distinct() -> None:
    ids = {new_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(ID_PATTERN.match(i) for i in ids)
    assert validate_id("abc", field="x") == "abc"


def test_page_size_rules() -> None:
    assert page_size(0, default=50) == 50
    assert page_size(7, default=50) == 7
    assert page_size(10**6, default=50) == MAX_PAGE_SIZE
    with pytest.raises(InvalidArgument):
        page_size(-1, default=50)


def test_page_token_round_trip_is_bound_to_its_query() -> None:
    token = Keyset(str).encode(("k",), {"filter": "a"})
    assert Keyset(str).decode(token, {"filter": "a"}) == ("k",)
    assert Keyset(str).decode("", {"filter": "a"}) is None
    with pytest.raises(InvalidArgument, match="different filter"):
        Keyset(str).decode(token, {"filter": "b"})


@pytest.mark.parametrize("token", ["garbage!", "e30", "bnVsbA", "W10"])
def test_forged_page_tokens_are_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        Keyset(str).decode(token, {})
    assert caught.value.violations[0][0] == "page_token"


RULES = {
    "labels.*": FieldRule(EQUALITY),
    "state": FieldRule(EQUALITY),
    "create_time": TIME_RANGE,
}


def test_filter_parses_conjunctions_with_quotes_and_escapes() -> None:
    text = 'labels.channel = "web \\"x\\"" AND state = RUNNING'
    terms = parse_filter(text + ' AND create_time >= "2026-01-01T00:00:00Z"', RULES)
    assert [(t.field, t.op, t.value) for t in terms] == [
        ("labels.channel", "=", 'web "x"'),
        ("state", "=", "RUNNING"),
        ("create_time", ">=", "2026-01-01T00:00:00Z"),
    ]
    assert terms[0].key == "channel"
    assert parse_filter("  ", RULES) == []


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (" AND ".join(['labels.a = "b"'] * 33), "33 terms"),
        (" AND ".join([f'labels.k{i} = "v"' for i in range(40)]), "40 terms"),
        ('labels.a = "' + "x" * 3000 + '"', "characters"),
    ],
)
def test_a_filter_is_bounded_in_terms_and_length(text: str, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why) as raised:
        parse_filter(text, RULES)
    assert raised.value.violations[0][0] == "filter"
    parse_filter(" AND ".join(['labels.a = "b"'] * 32), RULES)  # the limit itself passes
