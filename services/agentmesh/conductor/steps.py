"""What a running turn does, from its routing event to its outcome: the user's
message to Memory, the routing decision recorded and streamed, then the chosen
agent's run relayed (or its Job, for a background turn), and the runs of the agents
it hands the turn to (``domain/handoffs.py``), each hand-off a routing event and a
decision of its own. The turn runner (``turns.py``) owns the task this runs in and
tells the outcome as the turn's ending event; :meth:`TurnSteps.answer` makes the
reply of a turn that completed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from typing import Any, Final, Protocol

import structlog
from google.protobuf import json_format, struct_pb2
from google.rpc import code_pb2, status_pb2

from agentmesh.conductor.background import run_as_job
from agentmesh.conductor.domain.handoffs import (
    HandoffWatch,
    aggregate,
    handoff_parts,
    handoff_target,
    may_hand_off,
    usage_sum,
)
from agentmesh.conductor.domain.turns import Resumption, decision_id, thread_id
from agentmesh.conductor.downstream import Downstream
from agentmesh.conductor.settings import ConductorSettings
from agentmesh.conductor.turn_model import Outcome, Route, TurnRequest
from agentmesh.core.context import current_authorization
from agentmesh.core.errors import NotFound
from agentmesh.core.json_schema import schema_violations, whole_numbers
from agentmesh.core.names import AGENTS, DECISIONS, SESSIONS
from agentmesh.core.validation import Violations
from agentmesh.v1 import agent_pb2, common_pb2, conductor_pb2, memory_pb2

_log = structlog.get_logger("agentmesh.conductor.steps")

MAX_SUMMARY_CHARS: Final = 512
SUPERVISED: Final = conductor_pb2.ROUTING_STRATEGY_SUPERVISOR
Emit = Callable[..., Awaitable[None]]


class Reviewer(Protocol):
    """The supervisor's review of a supervised turn's answers (``routing.Router``)."""

    async def review(
        self,
        tenant: str,
        text: str,
        structured: struct_pb2.Struct,
        answers: Sequence[tuple[str, str]],
    ) -> Route | None:
        """The agent that continues the turn, or None: the turn ends."""


def routing_of(route: Route, turn_id: str, step: int = 0) -> conductor_pb2.RoutingDecision:
    """The routing event of turn ``turn_id`` (``step`` 0) or of its ``step``-th
    hand-off, naming the decision it is recorded as."""
    return conductor_pb2.RoutingDecision(
        strategy=route.strategy,
        agent=AGENTS.format(route.agent_id),
        candidates=route.candidates,
        reason=route.reason,
        decision=DECISIONS.format(decision_id(turn_id, step)),
    )


class TurnSteps:
    """The steps of one turn (``turn_id`` of ``request``), each event told to ``emit``."""

    def __init__(
        self,
        settings: ConductorSettings,
        downstream: Downstream,
        emit: Emit,
        tenant: str,
        request: TurnRequest,
        turn_id: str,
        *,
        on_job: Callable[[str], Any],
        reviewer: Reviewer | None = None,
    ) -> None:
        self._settings = settings
        self._tenant = tenant
        self._reviewer = reviewer
        self._downstream = downstream
        self._emit = emit
        self._request = request
        self._turn_id = turn_id
        self._on_job = on_job
        self._session = SESSIONS.format(request.session_id)
        # Explicit: grpc.aio files an interceptor under its first matching call type
        # only, so the channel's forwarding interceptor covers unary calls, not streams.
        self._metadata = (("authorization", current_authorization() or ""),)

    async def run(
        self,
        agent_id: str,
        thread: str,
        route: Route | None,
        resumption: Resumption | None,
        *,
        routed: bool = False,
    ) -> Outcome:
        """Runs the turn: a new one taken by ``route``'s agent on ``thread`` (``routed``:
        its routing event was stored as it started), or the continuation of
        ``resumption``'s paused run."""
        request = self._request
        outcome = Outcome(agent_id, thread, agents=[agent_id])
        call: AsyncIterable[agent_pb2.AgentEvent]
        if resumption is None:
            assert route is not None
            # The user's message, the decision (its name chosen here) and, unless the
            # turn's start stored it, the routing event side by side: one round trip.
            writes: list[Awaitable[Any]] = [
                self._downstream.append_message(
                    request.session_id,
                    f"{self._turn_id}-user",
                    common_pb2.ROLE_USER,
                    request.parts,
                ),
                self._record(route, 0),
            ]
            if not routed:
                writes.append(self._emit(routing=routing_of(route, self._turn_id)))
            await asyncio.gather(*writes)
            if request.background:
                return await run_as_job(
                    self._downstream,
                    self._emit,
                    request,
                    self._turn_id,
                    outcome,
                    metadata=self._metadata,
                    timeout_s=self._settings.turn_timeout_s,
                    call_timeout_s=self._settings.routing_timeout_s,
                    on_job=self._on_job,
                )
            call = self._stream(agent_id, thread, request.parts)
        else:
            assert request.resume is not None
            await self._emit(
                routing=conductor_pb2.RoutingDecision(
                    strategy=conductor_pb2.ROUTING_STRATEGY_EXPLICIT,
                    agent=AGENTS.format(agent_id),
                    reason=f"continues turn {resumption.paused_turn}, paused on an interrupt",
                )
            )
            call = self._downstream.agents.ResumeAgent(
                agent_pb2.ResumeAgentRequest(
                    name=AGENTS.format(agent_id),
                    thread_id=thread,
                    resume=request.resume,
                    options=agent_pb2.RunOptions(session=self._session),
                ),
                metadata=self._metadata,
                timeout=self._settings.turn_timeout_s,
            )
        supervised = route is not None and route.strategy == SUPERVISED
        while True:
            closing = await self._relay(call, outcome)
            step = await self._next(outcome, closing, supervised=supervised)
            if step is None:
                return outcome
            said = list(outcome.result.parts) if outcome.result is not None else []
            answered_by = AGENTS.format(outcome.agent_id)
            handed_by = answered_by if closing is not None else "the supervisor"
            handoffs = len(outcome.agents)
            await asyncio.gather(
                self._record(step, handoffs, from_agent=answered_by),
                self._emit(routing=routing_of(step, self._turn_id, handoffs)),
            )
            parts = handoff_parts(request.parts, handed_by, step.reason, answered_by, said)
            outcome.answers.append(said)
            outcome.earlier_usage.append(outcome.run_usage)
            outcome.agent_id = step.agent_id
            outcome.thread = thread_id(request.session_id, step.agent_id)
            outcome.agents.append(step.agent_id)
            outcome.result, outcome.usage = None, common_pb2.TokenUsage()
            call = self._stream(step.agent_id, outcome.thread, parts)

    async def answer(self, outcome: Outcome) -> conductor_pb2.FinalMessage:
        """The reply of a turn that completed: every agent's answer in order, appended
        to Memory as one assistant message (none when it has no content: Memory keeps
        no empty messages)."""
        assert outcome.result is not None
        agent = AGENTS.format(outcome.agent_id)
        parts = aggregate([*outcome.answers, list(outcome.result.parts)])
        name = ""
        if parts:
            stored = await self._downstream.append_message(
                self._request.session_id,
                f"{self._turn_id}-answer",
                common_pb2.ROLE_ASSISTANT,
                parts,
                agent=agent,
            )
            name = stored.name
        return conductor_pb2.FinalMessage(
            message=name,
            agent=agent,
            parts=parts,
            usage=usage_sum([*outcome.earlier_usage, outcome.run_usage]),
            agents=[AGENTS.format(a) for a in outcome.agents],
        )

    async def pause(self, outcome: Outcome) -> None:
        """Keeps the answers of the agents that handed the turn on before the one that
        paused (appended to Memory as the assistant's message of the turn; the resumed
        turn answers with the paused agent's part)."""
        parts = aggregate(outcome.answers)
        if parts:
            await self._downstream.append_message(
                self._request.session_id,
                f"{self._turn_id}-answer",
                common_pb2.ROLE_ASSISTANT,
                parts,
                agent=AGENTS.format(outcome.agents[-2]),
            )

    async def _record(self, route: Route, step: int, *, from_agent: str = "") -> None:
        """Appends the decision of the turn's routing (``step`` 0) or of its ``step``-th
        hand-off (``from_agent`` handing over) to Memory's audit trail, under the name
        its routing event gives (once: a retry finds it by its request id)."""
        agent = AGENTS.format(route.agent_id)
        handoff = route.strategy == conductor_pb2.ROUTING_STRATEGY_HANDOFF
        metadata = _struct(
            by="conductor",
            turn_id=self._turn_id,
            strategy=conductor_pb2.RoutingStrategy.Name(route.strategy),
        )
        if from_agent:
            metadata.update({"from_agent": from_agent})
        decision = memory_pb2.Decision(
            agent=agent,
            session=self._session,
            input_summary=self._request.text[:MAX_SUMMARY_CHARS],
            reasoning=route.reason,
            candidates=route.candidates,
            chosen_action=agent,
            outcome="handed over" if handoff else "routed",
            metadata=metadata,
        )
        if route.usage is not None:  # a model chose: what it cost
            decision.latency.FromNanoseconds(int(route.latency_s * 1e9))
            decision.usage.CopyFrom(route.usage)
        await self._downstream.record_decision(decision, decision_id(self._turn_id, step))

    def _stream(
        self, agent_id: str, thread: str, parts: Any
    ) -> AsyncIterable[agent_pb2.AgentEvent]:
        return self._downstream.agents.StreamAgent(
            agent_pb2.StreamAgentRequest(
                name=AGENTS.format(agent_id),
                thread_id=thread,
                input=self._request.input,
                parts=parts,
                options=agent_pb2.RunOptions(session=self._session),
            ),
            metadata=self._metadata,
            timeout=self._settings.turn_timeout_s,
        )

    async def _next(
        self, outcome: Outcome, closing: agent_pb2.Handoff | None, *, supervised: bool
    ) -> Route | None:
        """Who takes the turn after a run: the agent the run handed off to (``closing``),
        else, in a turn the supervisor routed, the agent its review picks; None when the
        turn ends here (an interrupt or error, the limit reached, FINISH, an agent that
        cannot take the turn)."""
        if outcome.result is None or outcome.error or outcome.interrupt:
            return None
        if not may_hand_off(len(outcome.agents) - 1, self._settings.max_handoffs):
            if closing is not None:
                _log.info("hand-off past the limit not taken", turn_id=self._turn_id)
            return None
        if closing is not None:
            target = handoff_target(closing, outcome.agent_id)
            if target is None:
                return None
            reason = closing.reason or f"{AGENTS.format(outcome.agent_id)} handed the turn over"
            step: Route | None = Route(target, conductor_pb2.ROUTING_STRATEGY_HANDOFF, reason)
        elif supervised and self._reviewer is not None:
            step = await self._reviewer.review(
                self._tenant, self._request.text, self._request.input, self._answers(outcome)
            )
        else:
            return None
        if step is None or not await self._takes_input(step.agent_id):
            return None
        return step

    def _answers(self, outcome: Outcome) -> list[tuple[str, str]]:
        """Each run's answer so far as (agent id, text), for the supervisor's review."""
        assert outcome.result is not None
        answers = [*outcome.answers, list(outcome.result.parts)]
        return [
            (agent, " ".join(p.text for p in parts if p.text))
            for agent, parts in zip(outcome.agents, answers, strict=True)
        ]

    async def _takes_input(self, agent_id: str) -> bool:
        """Whether the Agent service serves ``agent_id`` and its schema takes the turn's
        input (a hand-off to an agent it does not serve is one inside the agent's own
        graph)."""
        try:
            validator = await self._downstream.validator(agent_id)
        except NotFound:
            return False
        violations = Violations()
        value = whole_numbers(json_format.MessageToDict(self._request.input))
        schema_violations(value, validator, violations, field="input")
        if violations:
            _log.info("hand-off to an agent refusing the input not taken", to_agent=agent_id)
        return not violations

    async def _relay(
        self, call: AsyncIterable[agent_pb2.AgentEvent], outcome: Outcome
    ) -> agent_pb2.Handoff | None:
        """Relays one run's events into ``outcome``; returns the hand-off it ended on."""
        watch = HandoffWatch()
        try:
            async for event in call:
                await self._emit(agent_event=event)
                watch.see(event)
                kind = event.WhichOneof("event")
                if kind == "interrupt":
                    outcome.interrupt = event.interrupt
                elif kind == "usage":
                    outcome.usage = event.usage
                elif kind == "error":
                    outcome.error = event.error
                elif kind == "final":
                    outcome.result = event.final
                    if event.final.status == agent_pb2.RUN_STATUS_FAILED:
                        outcome.error = event.final.error
                    elif event.final.status == agent_pb2.RUN_STATUS_INTERRUPTED:
                        outcome.interrupt = outcome.interrupt or event.final.interrupt
        finally:
            cancel = getattr(call, "cancel", None)
            if cancel is not None:
                cancel()  # no-op once the run ended; else the agent's run stops
        if outcome.interrupt is None and outcome.error is None and outcome.result is None:
            outcome.error = status_pb2.Status(
                code=code_pb2.UNAVAILABLE, message="the agent's stream ended without an outcome"
            )
        return watch.closing


def _struct(**values: Any) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message
