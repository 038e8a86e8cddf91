"""The offline agents' rules: safe arithmetic, a human's yes, extractive summaries."""

from __future__ import annotations

import pytest

from agentmesh.agent.agents.approval import approved
from agentmesh.agent.agents.arithmetic import CalculationError, calculate
from agentmesh.agent.agents.summarizer import extract_summary


@pytest.mark.parametrize(
    ("expression", "value"),
    [("2+3*4", 14), ("(1+2)**3", 27), ("7/2", 3.5), ("-4 // 3", -2), ("10 % 4", 2), ("2**-1", 0.5)],
)
def test_arithmetic_is_computed(expression: str, value: float) -> None:
    assert calculate(expression) == value


@pytest.mark.parametrize(
    "expression",
    [
        '__import__("os").system("true")',  # a call: never evaluated
        "().__class__",  # attribute access
        "a + 1",  # a name
        "[1, 2]",
        "2 ** 1000000",  # an exponent that would take long
        "9 ** 9 ** 9",
        "10 ** 400",  # larger than a float
        "1 / 0",
        "(-1) ** 0.5",  # complex
        "1e308 * 10",
        "1 +",  # not an expression
        "1" * 300,  # too long
    ],
)
def test_anything_but_bounded_arithmetic_is_refused(expression: str) -> None:
    with pytest.raises(CalculationError):
        calculate(expression)


@pytest.mark.parametrize(
    ("answer", "yes"),
    [
        (True, True),
        (False, False),
        ("yes", True),
        (" Approve ", True),
        ("no", False),
        ({"approved": True}, True),
        (None, False),
        (1, False),
    ],
)
def test_a_human_yes(answer: object, yes: bool) -> None:
    assert approved(answer) is yes


def test_an_extractive_summary_keeps_the_central_sentences_in_order() -> None:
    text = (
        "Memory keeps sessions and messages. The weather was nice. "
        "Memory search finds memories by meaning. Lunch was pasta. "
        "Sessions hold messages and memories in Memory."
    )
    summary = extract_summary(text, 2)
    assert "weather" not in summary
    assert "Lunch" not in summary
    sentences = [s for s in summary.split(". ") if s]
    assert len(sentences) == 2
    assert summary.index("Memory") == 0  # original order kept


def test_a_short_text_comes_back_whole() -> None:
    assert extract_summary("One sentence only.", 3) == "One sentence only."
    assert extract_summary("", 3) == ""
