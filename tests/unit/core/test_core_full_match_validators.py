"""Validators match the whole input: a trailing newline (which ``re.match`` with ``$``
lets through) or other trailing whitespace is refused by every pattern check."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agentmesh.core.errors import InvalidArgument
from agentmesh.core.names import SESSIONS, validate_id
from agentmesh.core.validation import Violations, check_labels
from agentmesh.memory.rpcs.artifacts import media_type

pytestmark = pytest.mark.unit


def _labels(key: str, value: str) -> None:
    violations = Violations()
    check_labels({key: value}, violations, field="labels")
    violations.raise_if_any()


CHECKS: dict[str, tuple[Callable[[str], object], str]] = {
    "id": (lambda v: validate_id(v, field="id"), "trip"),
    "name": (lambda v: SESSIONS.parse(v), "sessions/trip"),
    "label key": (lambda v: _labels(v, "x"), "env"),
    "label value": (lambda v: _labels("env", v), "prod"),
    "media type": (lambda v: media_type(v, field="media_type"), "text/plain"),
}


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("suffix", ["\n", "\r\n", " ", "\t", "\x00"])
def test_trailing_characters_are_refused(check: str, suffix: str) -> None:
    validate, good = CHECKS[check]
    validate(good)  # the value itself passes
    with pytest.raises(InvalidArgument):
        validate(good + suffix)
