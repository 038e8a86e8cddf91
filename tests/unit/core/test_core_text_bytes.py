"""Violations.text_bytes: text bounded in UTF-8 bytes, free of NUL."""

from __future__ import annotations

import pytest

from agentmesh.core.errors import InvalidArgument
from agentmesh.core.validation import Violations

pytestmark = pytest.mark.unit


def test_text_within_its_bytes_passes_and_is_returned() -> None:
    violations = Violations()
    assert violations.text_bytes("", "a", max_bytes=4) == ""
    assert violations.text_bytes("éé", "b", max_bytes=4) == "éé"  # 4 bytes of UTF-8
    assert not violations


def test_bytes_not_characters_are_counted_and_nul_is_refused() -> None:
    violations = Violations()
    violations.text_bytes("ééé", "long", max_bytes=4)  # 3 characters, 6 bytes
    violations.text_bytes("n\x00l", "nul", max_bytes=4)
    with pytest.raises(InvalidArgument) as raised:
        violations.raise_if_any()
    assert raised.value.violations == (
        ("long", "larger than 4 bytes"),
        ("nul", "must not contain NUL characters"),
    )
