"""Who takes a turn naming no agent: the adapter around ``domain/routing.py``.

It reads the agents' cards from the Agent service (kept ``agent_card_ttl_s`` per
tenant), keeps those that can take the turn (an agent labelled ``llm=true`` only when
the deployment has a model; only agents whose input schema accepts the turn's input),
then asks the LLM supervisor when a model is configured, and similarity when not or
when the supervisor fails. Similarity embeds through Memory's EmbedTexts, so cards and
messages share memory search's embedder; a phrase's vector is kept per embedder and
text, so a card is embedded once per version and each turn embeds only its message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import structlog
from google.protobuf import json_format, struct_pb2
from langchain_core.messages import HumanMessage, SystemMessage

from agentmesh.conductor.domain.routing import (
    MAX_MESSAGE_CHARS,
    CardSummary,
    Choice,
    Profile,
    choose,
    phrases_of,
    rank,
    review_choice,
    review_prompt,
    supervisor_choice,
    supervisor_prompt,
    supervisor_schema,
    terms,
)
from agentmesh.conductor.downstream import Downstream
from agentmesh.conductor.settings import ConductorSettings
from agentmesh.conductor.turn_model import Route
from agentmesh.core.errors import Unavailable
from agentmesh.core.json_schema import compile_schema, schema_violations, whole_numbers
from agentmesh.core.names import AGENTS
from agentmesh.core.offload import convert_sized
from agentmesh.core.validation import Violations
from agentmesh.llm.models import ChatModels
from agentmesh.llm.structured import invoke_structured
from agentmesh.llm.usage import UsageMeter
from agentmesh.v1 import agent_pb2, common_pb2, conductor_pb2

_log = structlog.get_logger("agentmesh.conductor.routing")

EMBED_BATCH: Final = 64
"""Texts per EmbedTexts call (its limit)."""
MAX_CACHED_VECTORS: Final = 20_000
"""Phrase vectors kept at most (cleared when full), more than the phrases of
``routing_max_agents`` cards can be."""
MAX_CACHED_TENANTS: Final = 1_000
"""Tenants whose card lists are kept at most (cleared when full)."""
MAX_CANDIDATES: Final = 100
"""Candidates a decision records at most (Memory's limit)."""
MAX_CANDIDATE_REASON_BYTES: Final = 1000
"""A candidate's reason is cut to this (Memory keeps at most 1 KiB)."""
LLM_LABEL: Final = "llm"
"""The card label of agents that cannot answer without a model (``llm=true``)."""

_STRATEGIES: Final = {
    "similarity": conductor_pb2.ROUTING_STRATEGY_SIMILARITY,
    "default": conductor_pb2.ROUTING_STRATEGY_DEFAULT,
    "supervisor": conductor_pb2.ROUTING_STRATEGY_SUPERVISOR,
}


@dataclass(frozen=True)
class _Card:
    agent_id: str
    summary: CardSummary
    phrases: tuple[str, ...]
    terms: tuple[frozenset[str], ...]
    validator: Any
    needs_model: bool


def _card(agent: agent_pb2.Agent) -> _Card:
    skills = [(s.display_name, s.description, tuple(s.examples)) for s in agent.skills]
    phrases = tuple(phrases_of(agent.description, skills))
    return _Card(
        agent_id=AGENTS.parse(agent.name),
        summary=CardSummary(
            AGENTS.parse(agent.name),
            agent.description,
            tuple((description, examples) for _, description, examples in skills),
        ),
        phrases=phrases,
        terms=tuple(terms(p) for p in phrases),
        validator=compile_schema(json_format.MessageToDict(agent.input_schema)),
        needs_model=agent.labels.get(LLM_LABEL) == "true",
    )


def _clip_bytes(text: str, limit: int) -> str:
    return text.encode()[:limit].decode(errors="ignore")


def _route(choice: Choice) -> Route:
    return Route(
        choice.agent_id,
        _STRATEGIES[choice.strategy],
        choice.reason,
        tuple(
            common_pb2.ScoredCandidate(
                name=AGENTS.format(c.agent_id),
                score=min(1.0, max(0.0, c.score)),
                reason=_clip_bytes(c.phrase, MAX_CANDIDATE_REASON_BYTES),
            )
            for c in choice.candidates[:MAX_CANDIDATES]
        ),
    )


def _costed(route: Route, started: float, spent: UsageMeter) -> Route:
    """``route`` with what asking the model cost: time since ``started``, tokens."""
    usage = spent.usage
    return dataclasses.replace(
        route,
        latency_s=time.monotonic() - started,
        usage=common_pb2.TokenUsage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            total_tokens=usage.total_tokens,
        ),
    )


class Router:
    """Routes turns: the agent named, else the supervisor model, else similarity."""

    def __init__(
        self,
        settings: ConductorSettings,
        downstream: Downstream,
        models: ChatModels | None,
    ) -> None:
        self._settings = settings
        self._downstream = downstream
        self._models = models
        model = settings.routing_model or (models.settings.default_model if models else "")
        self._model = model if settings.routing_supervisor and models is not None else ""
        self._has_model = bool(settings.routing_model or (models and models.settings.default_model))
        self._cards: dict[str, tuple[float, list[_Card]]] = {}
        self._by_version: dict[tuple[str, str], _Card] = {}
        self._vectors: dict[tuple[str, str], tuple[float, ...]] = {}
        self._embedder = ""

    async def route(
        self, tenant: str, agent_id: str | None, text: str, structured: struct_pb2.Struct
    ) -> Route:
        """Who takes a new turn of ``tenant`` with message ``text`` and input
        ``structured``; FAILED_PRECONDITION (``NO_ROUTE``) when nobody can."""
        if agent_id is not None:
            return Route(agent_id, conductor_pb2.ROUTING_STRATEGY_EXPLICIT, "the request named it")
        cards = await self._candidates(tenant, structured)
        failure = ""
        spent = UsageMeter()
        started = time.monotonic()
        if self._model and cards:
            try:
                choice = await self._supervise(cards, text, spent)
                return _costed(_route(choice), started, spent)
            except Exception as exc:  # whatever the model did: similarity decides
                failure = f"the supervisor model failed ({type(exc).__name__}); "
                _log.warning("supervisor failed; routing by similarity", error=str(exc)[:500])
        try:
            choice = await self._similar(cards, text)
        except Unavailable:
            if not self._settings.default_agent:
                raise
            choice = Choice(
                self._settings.default_agent,
                "default",
                "similarity unavailable (Memory did not embed); the default agent",
                (),
            )
        if failure:
            choice = Choice(
                choice.agent_id, choice.strategy, failure + choice.reason, choice.candidates
            )
            return _costed(_route(choice), started, spent)  # the failed call's tokens too
        return _route(choice)

    async def review(
        self,
        tenant: str,
        text: str,
        structured: struct_pb2.Struct,
        answers: Sequence[tuple[str, str]],
    ) -> Route | None:
        """After a turn the supervisor routed has ``answers`` (agent id, text): the agent
        the supervisor model hands the turn to next (strategy HANDOFF), or None when it
        picks FINISH, when there is no model, or when the model fails."""
        if not self._model or not self._settings.supervisor_review:
            return None
        cards = await self._candidates(tenant, structured)
        if not cards:
            return None
        assert self._models is not None
        ids = [card.agent_id for card in cards]
        system, user = review_prompt([card.summary for card in cards], text, answers)
        spent = UsageMeter()
        started = time.monotonic()
        try:
            model = await self._models.aget(self._model)
            async with asyncio.timeout(self._settings.routing_timeout_s):
                answer = await invoke_structured(
                    model,
                    [SystemMessage(content=system), HumanMessage(content=user)],
                    supervisor_schema(ids, finish=True),
                    attempts=self._models.settings.structured_attempts,
                    meter=spent,
                )
        except Exception as exc:  # whatever the model did: the turn ends as it is
            _log.warning("supervisor review failed; the turn ends", error=str(exc)[:500])
            return None
        choice = review_choice(answer, ids)
        if choice is None:
            return None
        route = _route(choice)
        handoff = dataclasses.replace(route, strategy=conductor_pb2.ROUTING_STRATEGY_HANDOFF)
        return _costed(handoff, started, spent)

    async def _candidates(self, tenant: str, structured: struct_pb2.Struct) -> list[_Card]:
        """The cards that can take the turn: a model for those that need one, an input
        their schema accepts."""
        cached = self._cards.get(tenant)
        if cached is None or cached[0] <= time.monotonic():
            agents = await self._downstream.list_cards(self._settings.routing_max_agents)
            cards = [self._card_of(agent) for agent in agents]
            if len(self._cards) >= MAX_CACHED_TENANTS:
                self._cards.clear()
            self._cards[tenant] = (time.monotonic() + self._settings.agent_card_ttl_s, cards)
        else:
            cards = cached[1]
        value = whole_numbers(json_format.MessageToDict(structured))
        fitting = []
        for card in cards:
            if card.needs_model and not self._has_model:
                continue
            violations = Violations()
            schema_violations(value, card.validator, violations, field="input")
            if not violations:
                fitting.append(card)
        return fitting

    def _card_of(self, agent: agent_pb2.Agent) -> _Card:
        """``agent``'s card as routing reads it, built once per agent and version."""
        key = (agent.name, agent.version)
        card = self._by_version.get(key)
        if card is None:
            card = _card(agent)
            if len(self._by_version) >= MAX_CACHED_VECTORS:
                self._by_version.clear()
            self._by_version[key] = card
        return card

    async def _supervise(self, cards: Sequence[_Card], text: str, spent: UsageMeter) -> Choice:
        assert self._models is not None
        ids = [card.agent_id for card in cards]
        system, user = supervisor_prompt([card.summary for card in cards], text)
        model = await self._models.aget(self._model)
        async with asyncio.timeout(self._settings.routing_timeout_s):
            answer = await invoke_structured(
                model,
                [SystemMessage(content=system), HumanMessage(content=user)],
                supervisor_schema(ids),
                attempts=self._models.settings.structured_attempts,
                meter=spent,
            )
        return supervisor_choice(answer, ids)

    async def _similar(self, cards: Sequence[_Card], text: str) -> Choice:
        threshold, default = self._settings.routing_threshold, self._settings.default_agent
        if not cards:
            return choose([], threshold=threshold, default_agent=default)
        message = text[:MAX_MESSAGE_CHARS]
        vector = await self._embed_all(message, [p for card in cards for p in card.phrases])
        profiles = [
            Profile(
                card.agent_id,
                card.phrases,
                tuple(self._vectors[(self._embedder, p)] for p in card.phrases),
                card.terms,
            )
            for card in cards
        ]
        weight = self._settings.routing_lexical_weight
        # Cosines of every phrase: microseconds for the built-in cards, seconds for a
        # thousand of them, so many cards are scored off the event loop.
        size = 8 * len(vector) * sum(len(card.phrases) for card in cards)
        ranked = await convert_sized(partial(rank, vector, message, profiles, weight), size)
        return choose(ranked, threshold=threshold, default_agent=default)

    async def _embed_all(self, message: str, phrases: Sequence[str]) -> tuple[float, ...]:
        """The message's vector; every phrase's vector cached under the embedder that
        made it. Memory's embedder may change (a redeploy): then every phrase is
        embedded again with the new one."""
        missing = self._missing(phrases)
        response = await self._downstream.embed([message, *missing[: EMBED_BATCH - 1]])
        if response.embedder != self._embedder:
            self._vectors.clear()
            self._embedder = response.embedder
        vector = tuple(response.embeddings[0].values)
        self._keep(missing[: EMBED_BATCH - 1], response.embeddings[1:], response.embedder)
        for _ in range(2):
            rest = self._missing(phrases)
            for start in range(0, len(rest), EMBED_BATCH):
                batch = rest[start : start + EMBED_BATCH]
                answer = await self._downstream.embed(batch)
                if answer.embedder != self._embedder:
                    raise Unavailable(
                        "Memory's embedder changed during routing; send the message again",
                        reason="EMBEDDER_CHANGED",
                    )
                self._keep(batch, answer.embeddings, answer.embedder)
            if not self._missing(phrases):
                return vector
        raise Unavailable("the agents' cards could not be embedded", reason="EMBEDDER_CHANGED")

    def _missing(self, phrases: Sequence[str]) -> list[str]:
        return list(dict.fromkeys(p for p in phrases if (self._embedder, p) not in self._vectors))

    def _keep(self, phrases: Sequence[str], vectors: Sequence[Any], embedder: str) -> None:
        if len(self._vectors) + len(phrases) > MAX_CACHED_VECTORS:
            self._vectors.clear()
        for phrase, vector in zip(phrases, vectors, strict=True):
            self._vectors[(embedder, phrase)] = tuple(vector.values)
