"""The rules of routing a message no agent was named for: which phrases stand for an
agent, how a message scores against them, who wins, and what the LLM supervisor is
asked and may answer.

Similarity: each agent's card gives a few phrases (its description, its skills'
descriptions and their examples), embedded with Memory's embedder. A message scores
against an agent as its best phrase, each phrase's score a blend of two signals:

* the cosine similarity of the embeddings (what the configured embedder knows of
  meaning: synonyms with MiniLM, only shared words and spellings with ``hash``);
* the lexical overlap of content terms, where numbers and arithmetic operators are
  terms too, so "what is 17 * 23" meets the calculator's "what is 12 * (3 + 4)?"
  even with the offline ``hash`` embedder, which sees words only.

Both are in [0, 1] (negative cosines count as 0), so the blend is too. The best agent
at or above the threshold wins (SIMILARITY); below it the default agent takes the turn
(DEFAULT), and the scores are still recorded.

Supervisor: a model reads the cards and picks the agent (SUPERVISOR); after a turn
it picked for has an answer, it reviews the answers so far and picks FINISH or the
agent that adds to them (a hand-off), as langgraph-supervisor's loop does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from agentmesh.core.errors import FailedPrecondition

MAX_PHRASES: Final = 16
"""Phrases one card contributes at most (description, skill descriptions, examples)."""
MAX_PHRASE_CHARS: Final = 512
"""A phrase longer than this is cut: what an agent is for is said early."""
MAX_MESSAGE_CHARS: Final = 1024
"""The start of the message that is scored: a request says what it wants first (the
text to summarize follows it)."""
MAX_PROMPT_MESSAGE_CHARS: Final = 4000
"""The start of the message the supervisor model reads."""
MAX_REASON_CHARS: Final = 500
"""Longest reason the supervisor may give."""

_TOKEN: Final = re.compile(r"\d+(?:\.\d+)?|\w+|[-+*/%^]", re.UNICODE)
_FUNCTION_WORDS: Final = (
    "a an and are as at be but by can could did do does for from give had has "
    "have how i if in into is it its me my of on or our please say so than that "
    "the their them then there these this those to was we what when where which "
    "who why will with would you your yours"
)
_STOPWORDS: Final = frozenset(_FUNCTION_WORDS.split())
NUMBER_TERM: Final = "#number"
"""The term every number in a text stands as."""


def phrases_of(description: str, skills: Sequence[tuple[str, str, Sequence[str]]]) -> list[str]:
    """The phrases that stand for an agent: its description, then each skill's name,
    description and examples (``skills``: (name, description, examples)), without
    empty ones or repeats, each cut to ``MAX_PHRASE_CHARS``, at most ``MAX_PHRASES``."""
    found: list[str] = []
    candidates = [description]
    for name, skill_description, examples in skills:
        candidates += [name, skill_description, *examples]
    for candidate in candidates:
        phrase = candidate.strip()[:MAX_PHRASE_CHARS]
        if phrase and phrase not in found:
            found.append(phrase)
        if len(found) == MAX_PHRASES:
            break
    return found


def terms(text: str) -> frozenset[str]:
    """A text's content terms: lowercase words but common function words, a plural's
    singular, every number as ``NUMBER_TERM``, arithmetic operators as themselves."""
    found: set[str] = set()
    for token in _TOKEN.findall(text.lower()):
        if token[0].isdigit():
            found.add(NUMBER_TERM)
        elif token in _STOPWORDS:
            continue
        elif len(token) > 3 and token.endswith("s") and not token.endswith("ss"):
            found.add(token[:-1])
        else:
            found.add(token)
    return frozenset(found)


def overlap(message: frozenset[str], phrase: frozenset[str]) -> float:
    """The share of the smaller term set found in the other one (0 when either is
    empty): a short phrase fully present in a long message scores 1."""
    if not message or not phrase:
        return 0.0
    return len(message & phrase) / min(len(message), len(phrase))


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two vectors of the same length (0 for a zero vector)."""
    if len(a) != len(b):
        raise ValueError(f"vectors of {len(a)} and {len(b)} components")
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    norms = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    return dot / norms if norms else 0.0


@dataclass(frozen=True)
class Profile:
    """An agent as similarity sees it: its phrases, their vectors and terms."""

    agent_id: str
    phrases: tuple[str, ...]
    vectors: tuple[tuple[float, ...], ...]
    terms: tuple[frozenset[str], ...]


@dataclass(frozen=True)
class Scored:
    """An agent's score against a message and the phrase that gave it."""

    agent_id: str
    score: float
    phrase: str


def score(
    vector: Sequence[float], message_terms: frozenset[str], profile: Profile, lexical_weight: float
) -> Scored:
    """``profile``'s best phrase against the message: (1 - w) * max(0, cosine) + w *
    overlap, w = ``lexical_weight``."""
    best, best_phrase = 0.0, ""
    for phrase, phrase_vector, phrase_terms in zip(
        profile.phrases, profile.vectors, profile.terms, strict=True
    ):
        value = (1 - lexical_weight) * max(0.0, cosine(vector, phrase_vector))
        value += lexical_weight * overlap(message_terms, phrase_terms)
        if value > best or not best_phrase:
            best, best_phrase = value, phrase
    return Scored(profile.agent_id, min(1.0, best), best_phrase)


def rank(
    vector: Sequence[float],
    message: str,
    profiles: Sequence[Profile],
    lexical_weight: float,
) -> list[Scored]:
    """Every profile scored against the message, best first (ties by agent id)."""
    message_terms = terms(message[:MAX_MESSAGE_CHARS])
    scored = [score(vector, message_terms, p, lexical_weight) for p in profiles]
    return sorted(scored, key=lambda s: (-s.score, s.agent_id))


@dataclass(frozen=True)
class Choice:
    """Who takes the turn, how they were chosen, why, and who else was considered."""

    agent_id: str
    strategy: Literal["similarity", "default", "supervisor"]
    reason: str
    candidates: tuple[Scored, ...]


def choose(ranked: Sequence[Scored], *, threshold: float, default_agent: str) -> Choice:
    """The best of ``ranked`` when it scores at least ``threshold``; otherwise
    ``default_agent``; FAILED_PRECONDITION (``NO_ROUTE``) when neither exists."""
    candidates = tuple(ranked)
    if ranked and ranked[0].score >= threshold:
        best = ranked[0]
        return Choice(
            best.agent_id,
            "similarity",
            f"closest card: {best.score:.2f} (threshold {threshold:.2f}) against {best.phrase!r}",
            candidates,
        )
    best_text = (
        f"the best, {ranked[0].agent_id}, scored {ranked[0].score:.2f}"
        if ranked
        else "no agent could take the message"
    )
    if default_agent:
        return Choice(
            default_agent,
            "default",
            f"no card scored {threshold:.2f} or more ({best_text}); the default agent",
            candidates,
        )
    raise FailedPrecondition(
        "NO_ROUTE",
        f"no agent named, no card scored {threshold:.2f} or more ({best_text}), and no"
        " default agent (AGENTMESH_CONDUCTOR_DEFAULT_AGENT)",
        [("ROUTE", "agent", "name an agent, or configure a default agent")],
    )


# -- the LLM supervisor ----------------------------------------------------------------


@dataclass(frozen=True)
class CardSummary:
    """What the supervisor model reads of an agent."""

    agent_id: str
    description: str
    skills: tuple[tuple[str, tuple[str, ...]], ...]
    """(description, examples) of each skill."""


SUPERVISOR_INSTRUCTIONS: Final = (
    "You are the router of a multi-agent system. Pick the one agent best suited to"
    " answer the user's message, from the agents listed. Judge by what each agent says"
    " it does and by its examples. Give a one-sentence reason and your confidence"
    " between 0 and 1."
)


def supervisor_schema(agent_ids: Sequence[str], *, finish: bool = False) -> dict[str, Any]:
    """The JSON Schema of the supervisor's answer: one of ``agent_ids`` (or, ``finish``
    for a review, ``FINISH``), a reason and a confidence."""
    return {
        "type": "object",
        "properties": {
            "agent": {"type": "string", "enum": [*agent_ids, *([FINISH] if finish else [])]},
            "reason": {"type": "string", "maxLength": MAX_REASON_CHARS},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["agent", "reason"],
        "additionalProperties": False,
    }


def _agent_lines(cards: Sequence[CardSummary]) -> list[str]:
    lines = ["Agents:"]
    for card in cards:
        lines.append(f"- {card.agent_id}: {card.description[:MAX_PHRASE_CHARS]}")
        for description, examples in card.skills:
            shown = "; ".join(e[:MAX_PHRASE_CHARS] for e in examples)
            lines.append(f"  - skill: {description[:MAX_PHRASE_CHARS]} (e.g. {shown})")
    return lines


def supervisor_prompt(cards: Sequence[CardSummary], message: str) -> tuple[str, str]:
    """The supervisor's system prompt (instructions and the agents) and user prompt (the
    message, cut to ``MAX_PROMPT_MESSAGE_CHARS``)."""
    lines = [SUPERVISOR_INSTRUCTIONS, "", *_agent_lines(cards)]
    return "\n".join(lines), message[:MAX_PROMPT_MESSAGE_CHARS]


FINISH: Final = "FINISH"
"""The supervisor's review answer that ends the turn with the answers so far."""
MAX_REVIEW_ANSWER_CHARS: Final = 2000
"""The start of each answer the supervisor's review reads."""
REVIEW_INSTRUCTIONS: Final = (
    "You supervise a multi-agent system. Agents have answered the user's message; their"
    " answers follow it. If together they answer the message, pick FINISH. Otherwise"
    " pick the one agent, from the agents listed, that should add to the answer. Give a"
    " one-sentence reason and your confidence between 0 and 1."
)


def review_prompt(
    cards: Sequence[CardSummary], message: str, answers: Sequence[tuple[str, str]]
) -> tuple[str, str]:
    """The supervisor's review prompts: instructions and the agents; the user's message
    and each answer so far (``answers``: agent id and text), each cut."""
    system = "\n".join([REVIEW_INSTRUCTIONS, "", *_agent_lines(cards)])
    user = [f"User's message: {message[:MAX_PROMPT_MESSAGE_CHARS]}", ""]
    for agent_id, text in answers:
        user.append(f"Answer of {agent_id}: {text[:MAX_REVIEW_ANSWER_CHARS]}")
    return system, "\n".join(user)


def review_choice(answer: Mapping[str, Any], agent_ids: Sequence[str]) -> Choice | None:
    """The review's validated answer: None for FINISH, else the agent to continue."""
    if answer["agent"] == FINISH:
        return None
    return supervisor_choice(answer, agent_ids)


def supervisor_choice(answer: Mapping[str, Any], agent_ids: Sequence[str]) -> Choice:
    """The supervisor's validated answer as a choice: the chosen agent with the model's
    confidence (1 when it gave none), the others at 0."""
    chosen = str(answer["agent"])
    reason = str(answer["reason"])[:MAX_REASON_CHARS]
    confidence = float(answer.get("confidence", 1.0))
    candidates = [Scored(chosen, confidence, reason)]
    candidates += [Scored(a, 0.0, "") for a in agent_ids if a != chosen]
    return Choice(chosen, "supervisor", f"the supervisor model: {reason}", tuple(candidates))
