"""The rules of a conversation's turns: which thread an agent runs a session on,
whether a session takes a new turn now, and which events end a turn.

A session has at most one turn running (its claim expires, so a dead replica blocks
the session only for a while) and at most one turn paused on an interrupt; while one
is paused, the session takes only the resume of that interrupt. A message arriving
while the session is busy is refused, queued after the turns ahead, or stops the
running turn, as its busy policy says (:func:`on_busy`).
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from agentmesh.core.errors import Aborted, FailedPrecondition

MAX_THREAD_ID: Final = 128
"""The Agent service's longest thread id."""


class TurnState(enum.IntEnum):
    """Where a turn is (stored as its number in ``conductor.turns.state``)."""

    RUNNING = 1
    COMPLETED = 2
    INTERRUPTED = 3
    FAILED = 4
    QUEUED = 5
    """Waits for the turns ahead of it in the session (busy policy ENQUEUE)."""
    STOPPED = 6
    """Stopped by a newer message (busy policy INTERRUPT)."""


class BusyPolicy(enum.IntEnum):
    """What a message does while its session is busy (``agentmesh.v1.BusyPolicy``)."""

    REJECT = 1
    ENQUEUE = 2
    INTERRUPT = 3


class Admission(enum.Enum):
    """How a message enters its session."""

    START = "start"
    """The turn starts now."""
    ENQUEUE = "enqueue"
    """The turn waits in the session's queue."""
    INTERRUPT = "interrupt"
    """The running turn stops; this one starts now."""


ENDING_EVENTS: Final = frozenset({"final", "interrupt", "error"})
"""The ConverseEvent kinds that end a turn: exactly one per turn, its last event."""


def thread_id(session_id: str, agent_id: str) -> str:
    """The thread an agent runs a session on: one per session and agent, so the agent
    sees the turns it took earlier in the session. Readable when it fits the Agent
    service's 128 characters; otherwise the session id's start and a digest."""
    readable = f"conv.{session_id}.{agent_id}"
    if len(readable) <= MAX_THREAD_ID:
        return readable
    digest = hashlib.sha256(f"{session_id}/{agent_id}".encode()).hexdigest()[:40]
    return f"conv.{session_id[:40]}.{digest}"


def decision_id(turn_id: str, step: int = 0) -> str:
    """The id of the decision a turn's routing (``step`` 0) or its ``step``-th hand-off
    is recorded as in Memory: chosen before it is written, so the routing event can
    name it before Memory answers; also the write's request id (written once)."""
    return f"{turn_id}-route" if step == 0 else f"{turn_id}-handoff-{step}"


@dataclass(frozen=True)
class Conversation:
    """A session's conversation as stored: what a new turn is checked against."""

    running_turn: str | None
    running_expired: bool
    """The running turn's claim has expired (its replica died or hung)."""
    paused_turn: str | None
    paused_interrupt_id: str | None
    paused_agent: str | None
    paused_thread_id: str | None
    queued_turns: int = 0
    """Turns waiting in the session's queue (their claims live)."""

    @property
    def running(self) -> bool:
        """A turn runs, its claim live."""
        return self.running_turn is not None and not self.running_expired


@dataclass(frozen=True)
class Resumption:
    """What a resume continues: the paused turn's agent and thread."""

    paused_turn: str
    agent_id: str
    thread_id: str


def admit(
    session: str, conversation: Conversation, *, resume_interrupt_id: str | None
) -> Resumption | None:
    """Whether ``session`` takes a turn now: None for a new message, the paused turn to
    continue for a resume; ABORTED while another turn runs, FAILED_PRECONDITION for a
    message while a turn is paused or a resume that does not answer the pending
    interrupt."""
    if conversation.running:
        raise Aborted(
            "TURN_RUNNING",
            f"{session} is taking turn {conversation.running_turn}; retry when it ends"
            " (watch the session to see it end)",
        )
    paused = conversation.paused_turn
    if resume_interrupt_id is None:
        if paused is not None:
            raise FailedPrecondition(
                "TURN_PAUSED",
                f"turn {paused} of {session} waits for the answer to interrupt"
                f" {conversation.paused_interrupt_id!r}: send it with `resume`",
                [("TURN", session, "answer the pending interrupt first")],
            )
        return None
    if paused is None:
        raise FailedPrecondition(
            "NO_PAUSED_TURN",
            f"no turn of {session} waits for an answer",
            [("TURN", session, "resume only a turn that ended with an interrupt")],
        )
    if resume_interrupt_id != conversation.paused_interrupt_id:
        raise FailedPrecondition(
            "INTERRUPT_MISMATCH",
            f"turn {paused} of {session} waits on interrupt"
            f" {conversation.paused_interrupt_id!r}, not {resume_interrupt_id!r}",
            [("INTERRUPT", session, "answer the pending interrupt")],
        )
    assert conversation.paused_agent is not None
    assert conversation.paused_thread_id is not None
    return Resumption(paused, conversation.paused_agent, conversation.paused_thread_id)


def expired(expire_time: datetime | None, now: datetime) -> bool:
    """Whether a running turn's claim ending at ``expire_time`` has lapsed at ``now``."""
    return expire_time is not None and expire_time <= now


def on_busy(
    session: str, conversation: Conversation, policy: BusyPolicy, *, resume: bool
) -> Admission:
    """How a message with busy ``policy`` enters ``session``: START when nothing runs or
    waits (and always for a resume, which :func:`admit` checks); else ENQUEUE for
    ENQUEUE; INTERRUPT for INTERRUPT while a turn runs (START when turns only wait:
    this one goes first); ABORTED for REJECT."""
    busy = conversation.running or conversation.queued_turns > 0
    if resume or not busy:
        return Admission.START
    if policy is BusyPolicy.ENQUEUE:
        return Admission.ENQUEUE
    if policy is BusyPolicy.INTERRUPT:
        return Admission.INTERRUPT if conversation.running else Admission.START
    ahead = conversation.running_turn if conversation.running else "queued turns"
    raise Aborted(
        "TURN_RUNNING",
        f"{session} is taking turn {ahead}; retry when it ends (watch the session to see"
        " it end), or send the message with busy policy ENQUEUE or INTERRUPT",
    )


def may_start_queued(conversation: Conversation, turn_id: str, head: str | None) -> bool:
    """Whether queued turn ``turn_id`` starts now: nothing runs and it heads the queue."""
    return not conversation.running and head == turn_id


def queue_claim_s(poll_s: float) -> float:
    """How long a queued turn keeps its place without its replica refreshing it: a few
    of the waits between its checks (each check refreshes it)."""
    return 3 * poll_s + 5.0
