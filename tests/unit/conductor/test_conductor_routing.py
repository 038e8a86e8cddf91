"""The rules of routing without a named agent: the phrases of a card, terms and their
overlap, the blended score, who wins above the threshold and who takes the turn below
it, and what the supervisor model is asked and may answer. Vectors come from the
offline ``hash`` embedder, the devstack's fastest."""

from __future__ import annotations

import pytest

from agentmesh.conductor.domain.routing import (
    FINISH,
    MAX_PHRASE_CHARS,
    MAX_PHRASES,
    MAX_REVIEW_ANSWER_CHARS,
    NUMBER_TERM,
    CardSummary,
    Profile,
    Scored,
    choose,
    cosine,
    overlap,
    phrases_of,
    rank,
    review_choice,
    review_prompt,
    supervisor_choice,
    supervisor_prompt,
    supervisor_schema,
    terms,
)
from agentmesh.conductor.settings import ConductorSettings
from agentmesh.core.errors import FailedPrecondition
from agentmesh.core.settings import ConfigError
from agentmesh.llm.structured import schema_validator
from agentmesh.memory.embedders.hashing import HashEmbedder

EMBEDDER = HashEmbedder(384)
Skills = list[tuple[str, str, tuple[str, ...]]]
CARDS: dict[str, tuple[str, Skills]] = {
    "echo": (
        "Repeats the user's message back.",
        [("Echo", "Returns the text.", ("say hello back",))],
    ),
    "calculator": (
        "Calculates arithmetic expressions: numbers, + - * / % ** and parentheses.",
        [
            (
                "Arithmetic",
                "Evaluates an arithmetic expression.",
                ("what is 12 * (3 + 4)?", "2 ** 10"),
            )
        ],
    ),
    "summarizer": (
        "Summarizes a text.",
        [
            (
                "Summarize",
                "Shortens a text.",
                ("summarize this article", "give me the gist of these notes"),
            )
        ],
    ),
    "recall": (
        "Answers from your long-term memories (semantic search).",
        [("Recall", "Finds what you told it before.", ("what did I say about my flights?",))],
    ),
}


def _profile(agent_id: str) -> Profile:
    description, skills = CARDS[agent_id]
    phrases = phrases_of(description, skills)
    return Profile(
        agent_id,
        tuple(phrases),
        tuple(tuple(EMBEDDER.embed_one(p)) for p in phrases),
        tuple(terms(p) for p in phrases),
    )


PROFILES = [_profile(a) for a in CARDS]


def _rank(message: str) -> list[Scored]:
    return rank(EMBEDDER.embed_one(message), message, PROFILES, 0.5)


def test_a_cards_phrases_are_its_description_skills_and_examples_bounded() -> None:
    assert phrases_of("Adds.", [("Add", "Sums.", ("1 + 1", "Adds."))]) == [
        "Adds.",
        "Add",
        "Sums.",
        "1 + 1",
    ]
    many = phrases_of("d" * 2000, [("", "", tuple(f"e{i}" for i in range(40)))])
    assert len(many) == MAX_PHRASES
    assert len(many[0]) == MAX_PHRASE_CHARS


def test_terms_keep_content_numbers_and_operators() -> None:
    assert terms("What is 17 * 23.5?") == {NUMBER_TERM, "*"}
    assert terms("Summarize these notes") == {"summarize", "note"}
    assert terms("the of a") == frozenset()


def test_overlap_is_the_share_of_the_smaller_set() -> None:
    assert overlap(frozenset({"a", "b", "c"}), frozenset({"a"})) == 1.0
    assert overlap(frozenset({"a", "b"}), frozenset({"a", "c"})) == 0.5
    assert overlap(frozenset(), frozenset({"a"})) == 0.0


def test_cosine() -> None:
    assert cosine([1.0, 0.0], [2.0, 0.0]) == pytest.approx(1.0)
    assert cosine([1.0, 0.0], [0.0, 1.0]) == 0.0
    assert cosine([0.0, 0.0], [1.0, 0.0]) == 0.0
    with pytest.raises(ValueError, match="components"):
        cosine([1.0], [1.0, 0.0])


@pytest.mark.parametrize(
    ("message", "agent"),
    [
        ("what is 17 * 23", "calculator"),
        ("compute 3+4", "calculator"),
        ("summarize the following notes: we agreed to hire two engineers in May.", "summarizer"),
        ("what did I tell you about my trip", "recall"),
    ],
)
def test_the_offline_embedder_and_terms_route_by_what_the_message_asks(
    message: str, agent: str
) -> None:
    ranked = _rank(message)
    assert ranked[0].agent_id == agent
    assert ranked[0].score >= ConductorSettings().routing_threshold
    assert all(0.0 <= s.score <= 1.0 for s in ranked)
    assert [s.score for s in ranked] == sorted((s.score for s in ranked), reverse=True)


def test_the_best_above_the_threshold_wins_and_records_every_candidate() -> None:
    ranked = _rank("what is 17 * 23")
    choice = choose(ranked, threshold=0.4, default_agent="echo")
    assert (choice.agent_id, choice.strategy) == ("calculator", "similarity")
    assert "what is 12 * (3 + 4)?" in choice.reason
    assert [c.agent_id for c in choice.candidates] == [s.agent_id for s in ranked]
    assert len(choice.candidates) == len(CARDS)


def test_below_the_threshold_the_default_agent_takes_the_turn_with_the_scores() -> None:
    ranked = _rank("the weather is nice today")
    choice = choose(ranked, threshold=0.95, default_agent="echo")
    assert (choice.agent_id, choice.strategy) == ("echo", "default")
    assert "0.95" in choice.reason
    assert len(choice.candidates) == len(CARDS)
    with pytest.raises(FailedPrecondition) as caught:
        choose(ranked, threshold=0.95, default_agent="")
    assert caught.value.reason == "NO_ROUTE"
    assert choose([], threshold=0.4, default_agent="echo").agent_id == "echo"


def test_the_supervisor_is_asked_to_pick_one_of_the_cards() -> None:
    cards = [CardSummary("calculator", "Calculates.", (("Arithmetic.", ("2 + 2",)),))]
    system, user = supervisor_prompt(cards, "x" * 10_000)
    assert "- calculator: Calculates." in system
    assert "2 + 2" in system
    assert len(user) == 4000
    schema = supervisor_schema(["calculator", "echo"])
    validator = schema_validator(schema)
    assert validator.is_valid({"agent": "echo", "reason": "greets", "confidence": 0.5})
    assert not validator.is_valid({"agent": "billing", "reason": "x"})
    assert not validator.is_valid({"agent": "echo", "reason": "x", "confidence": 2})
    choice = supervisor_choice(
        {"agent": "echo", "reason": "a greeting", "confidence": 0.8}, ["calculator", "echo"]
    )
    assert (choice.agent_id, choice.strategy) == ("echo", "supervisor")
    assert choice.candidates[0] == Scored("echo", 0.8, "a greeting")
    assert choice.candidates[1] == Scored("calculator", 0.0, "")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ROUTING_THRESHOLD", "1.5"),
        ("ROUTING_LEXICAL_WEIGHT", "-0.1"),
        ("ROUTING_MAX_AGENTS", "0"),
        ("ROUTING_TIMEOUT_S", "0"),
    ],
)
def test_routing_settings_are_range_checked(name: str, value: str) -> None:
    with pytest.raises(ConfigError):
        ConductorSettings.from_env({f"AGENTMESH_CONDUCTOR_{name}": value})


def test_the_review_reads_every_answer_and_may_finish() -> None:
    cards = [CardSummary("echo", "Repeats.", ()), CardSummary("summarizer", "Sums up.", ())]
    system, user = review_prompt(
        cards, "gist please", [("echo", "gist please"), ("summarizer", "x" * 5000)]
    )
    assert "FINISH" in system
    assert "- summarizer: Sums up." in system
    assert user.startswith("User's message: gist please")
    assert "Answer of echo: gist please" in user
    assert "x" * MAX_REVIEW_ANSWER_CHARS in user
    assert "x" * (MAX_REVIEW_ANSWER_CHARS + 1) not in user
    finish = {"agent": FINISH, "reason": "done"}
    assert schema_validator(supervisor_schema(["echo"], finish=True)).is_valid(finish)
    assert not schema_validator(supervisor_schema(["echo"])).is_valid(finish)
    assert review_choice({"agent": FINISH, "reason": "done"}, ["echo"]) is None
    choice = review_choice({"agent": "echo", "reason": "more", "confidence": 0.5}, ["echo"])
    assert choice is not None
    assert (choice.agent_id, choice.candidates[0].score) == ("echo", 0.5)
