"""Busy sessions: what a message with each busy policy does while a turn runs or waits,
and when a queued turn starts."""

from __future__ import annotations

import dataclasses

import pytest

from agentmesh.conductor.domain.turns import (
    Admission,
    BusyPolicy,
    Conversation,
    may_start_queued,
    on_busy,
    queue_claim_s,
)
from agentmesh.core.errors import Aborted

IDLE = Conversation(None, False, None, None, None, None)
RUNNING = dataclasses.replace(IDLE, running_turn="t1")
EXPIRED = dataclasses.replace(RUNNING, running_expired=True)
WAITING = dataclasses.replace(IDLE, queued_turns=2)
S = "sessions/s"


@pytest.mark.parametrize("policy", list(BusyPolicy))
def test_an_idle_session_starts_the_turn_whatever_the_policy(policy: BusyPolicy) -> None:
    assert on_busy(S, IDLE, policy, resume=False) is Admission.START
    # A running turn whose claim lapsed (its replica died) no longer counts.
    assert on_busy(S, EXPIRED, policy, resume=False) is Admission.START


def test_reject_refuses_while_a_turn_runs_or_waits() -> None:
    for busy in (RUNNING, WAITING):
        with pytest.raises(Aborted) as caught:
            on_busy(S, busy, BusyPolicy.REJECT, resume=False)
        assert caught.value.reason == "TURN_RUNNING"


def test_enqueue_queues_behind_a_running_or_a_waiting_turn() -> None:
    assert on_busy(S, RUNNING, BusyPolicy.ENQUEUE, resume=False) is Admission.ENQUEUE
    assert on_busy(S, WAITING, BusyPolicy.ENQUEUE, resume=False) is Admission.ENQUEUE


def test_interrupt_stops_a_running_turn_and_goes_before_waiting_ones() -> None:
    assert on_busy(S, RUNNING, BusyPolicy.INTERRUPT, resume=False) is Admission.INTERRUPT
    assert on_busy(S, WAITING, BusyPolicy.INTERRUPT, resume=False) is Admission.START


def test_a_resume_is_left_to_admit() -> None:
    assert on_busy(S, RUNNING, BusyPolicy.ENQUEUE, resume=True) is Admission.START


def test_a_queued_turn_starts_when_nothing_runs_and_it_heads_the_queue() -> None:
    assert may_start_queued(IDLE, "t2", "t2")
    assert may_start_queued(EXPIRED, "t2", "t2")
    assert not may_start_queued(RUNNING, "t2", "t2")
    assert not may_start_queued(IDLE, "t3", "t2")
    assert queue_claim_s(0.5) > 3 * 0.5
