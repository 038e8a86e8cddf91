"""Session etags: version and incarnation, opaque, validated."""

from __future__ import annotations

import uuid

import pytest

from agentmesh.core.errors import InvalidArgument
from agentmesh.memory.convert import parse_session_etag, session_etag

pytestmark = pytest.mark.unit


def test_an_etag_round_trips_and_names_its_incarnation() -> None:
    incarnation = uuid.uuid4()
    etag = session_etag(7, incarnation)
    assert etag[0] == etag[-1] == '"'  # an RFC 9110 entity tag
    assert parse_session_etag(etag) == (7, incarnation)


def test_two_incarnations_at_the_same_version_have_different_etags() -> None:
    assert session_etag(1, uuid.uuid4()) != session_etag(1, uuid.uuid4())


def test_the_earlier_version_only_form_parses_without_an_incarnation() -> None:
    assert parse_session_etag('"3"') == (3, None)


@pytest.mark.parametrize(
    "etag", ["", '""', "x", '"1-"', '"1-zz"', '"-1"', '"1.5"', '"' + "9" * 20 + '"']
)
def test_anything_else_is_invalid_on_the_named_field(etag: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        parse_session_etag(etag, field="session.etag")
    assert [field for field, _ in raised.value.violations] == ["session.etag"]
