"""The rules of hand-offs within a turn: which run hands the turn to another agent,
how many hand-offs a turn takes, what the next agent is told, and the one reply the
agents' answers add up to.

An agent hands the turn on by ending its run on a hand-off: its last step is a
hand-off tool (``transfer_to_<agent>``, the langgraph-swarm idiom; the Agent service
tells it as a ``Handoff`` event) naming another agent the Agent service serves, with
nothing said or called after it. A hand-off followed by more of the run (a swarm's
agents handing off inside one graph) is the agent's own business.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from agentmesh.core.errors import InvalidArgument
from agentmesh.core.names import AGENTS
from agentmesh.v1 import agent_pb2, common_pb2

MAX_CONTEXT_CHARS: Final = 4000
"""The note the next agent gets (who handed over, why, what it said) is cut to this."""
_CONTINUES: Final = frozenset({"message_delta", "tool_call", "interrupt"})
"""Agent event kinds that show the run went on after a hand-off."""


@dataclass
class HandoffWatch:
    """Follows one run's events: the hand-off the run ended on, if any."""

    closing: agent_pb2.Handoff | None = None

    def see(self, event: agent_pb2.AgentEvent) -> None:
        """Takes the run's next event."""
        kind = event.WhichOneof("event")
        if kind == "handoff":
            self.closing = event.handoff
        elif kind in _CONTINUES:
            self.closing = None


def handoff_target(handoff: agent_pb2.Handoff, running_agent: str) -> str | None:
    """The agent id ``handoff`` passes the turn to; None when it names no agent (a
    malformed name) or the agent that runs (``running_agent``, an id)."""
    try:
        target = AGENTS.parse(handoff.to_agent)
    except InvalidArgument:
        return None
    return None if target == running_agent else target


def may_hand_off(taken: int, limit: int) -> bool:
    """Whether a turn that took ``taken`` hand-offs may take one more (``limit``: the
    most a turn takes; 0 turns hand-offs off)."""
    return taken < limit


def handoff_parts(
    user_parts: Sequence[common_pb2.Part],
    handed_by: str,
    reason: str,
    answered_by: str,
    said: Sequence[common_pb2.Part],
) -> list[common_pb2.Part]:
    """What the next agent is given: the user's message, then a note of who handed the
    turn over (``handed_by``: an agent's name, or the supervisor), why, and what the
    agent that answered last (``answered_by``) said (its text)."""
    note = f"{handed_by} handed this message over to you"
    note += f" ({reason.strip()})." if reason.strip() else "."
    text = " ".join(part.text.strip() for part in said if part.text.strip())
    if text:
        note += f" {answered_by} said: {text}"
    return [*user_parts, common_pb2.Part(text=note[:MAX_CONTEXT_CHARS])]


def aggregate(answers: Iterable[Sequence[common_pb2.Part]]) -> list[common_pb2.Part]:
    """The turn's one reply: every agent's answer in the order they answered."""
    return [part for answer in answers for part in answer]


def usage_sum(usages: Iterable[common_pb2.TokenUsage]) -> common_pb2.TokenUsage:
    """The tokens of every run of the turn together."""
    total = common_pb2.TokenUsage()
    for usage in usages:
        total.input_tokens += usage.input_tokens
        total.output_tokens += usage.output_tokens
        total.total_tokens += usage.total_tokens or usage.input_tokens + usage.output_tokens
    return total
