"""The job state machine: every legal change and the refusals of each action."""

from __future__ import annotations

import pytest

from agentmesh.core.errors import FailedPrecondition
from agentmesh.job.domain.states import (
    ACTIVE,
    TERMINAL,
    TRANSITIONS,
    State,
    after_failure,
    after_lost_worker,
    allowed,
    cancel_target,
    check_resume,
    check_retry,
)
from agentmesh.job.execution import run_key
from agentmesh.v1 import job_pb2


def test_states_are_the_contracts_numbers() -> None:
    assert {s.value for s in State} == {
        v for v in job_pb2.JobState.values() if v != job_pb2.JOB_STATE_UNSPECIFIED
    }
    assert frozenset(State) == TERMINAL | ACTIVE
    assert not TERMINAL & ACTIVE


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (State.PENDING, State.RUNNING),
        (State.RUNNING, State.INPUT_REQUIRED),
        (State.INPUT_REQUIRED, State.RUNNING),
        (State.RUNNING, State.SUCCEEDED),
        (State.RUNNING, State.FAILED),
        (State.RUNNING, State.PENDING),
        (State.RUNNING, State.CANCELLING),
        (State.CANCELLING, State.CANCELLED),
        (State.PENDING, State.CANCELLED),
        (State.INPUT_REQUIRED, State.CANCELLED),
        (State.FAILED, State.PENDING),
        (State.CANCELLED, State.PENDING),
    ],
)
def test_legal_changes(current: State, target: State) -> None:
    assert allowed(current, target)


def test_everything_else_is_illegal() -> None:
    legal = sum(len(targets) for targets in TRANSITIONS.values())
    assert legal == 12
    for current in State:
        for target in State:
            assert allowed(current, target) == (target in TRANSITIONS[current])
    # A finished job never runs again by itself, and a cancel is never undone by a worker.
    assert not any(allowed(State.SUCCEEDED, target) for target in State)
    assert not allowed(State.CANCELLING, State.SUCCEEDED)
    assert not allowed(State.CANCELLING, State.RUNNING)
    assert not allowed(State.CANCELLED, State.RUNNING)
    assert not allowed(State.PENDING, State.SUCCEEDED)


def test_cancel_targets() -> None:
    assert cancel_target("j", State.PENDING) is State.CANCELLED
    assert cancel_target("j", State.INPUT_REQUIRED) is State.CANCELLED
    assert cancel_target("j", State.RUNNING) is State.CANCELLING
    assert cancel_target("j", State.CANCELLING) is None
    assert cancel_target("j", State.CANCELLED) is None
    for ended in (State.SUCCEEDED, State.FAILED):
        with pytest.raises(FailedPrecondition) as caught:
            cancel_target("j", ended)
        assert caught.value.reason == f"JOB_{ended.name}"
        assert "jobs/j" in caught.value.message


def test_every_cancel_target_is_a_legal_change() -> None:
    for state in State:
        try:
            target = cancel_target("j", state)
        except FailedPrecondition:
            continue
        assert target is None or allowed(state, target)


def test_resume_only_when_waiting_for_input() -> None:
    check_resume("j", State.INPUT_REQUIRED)
    for state in set(State) - {State.INPUT_REQUIRED}:
        with pytest.raises(FailedPrecondition):
            check_resume("j", state)


def test_retry_only_after_failure_or_cancel() -> None:
    for state in (State.FAILED, State.CANCELLED):
        check_retry("j", state)
        assert allowed(state, State.PENDING)
    for state in set(State) - {State.FAILED, State.CANCELLED}:
        with pytest.raises(FailedPrecondition) as caught:
            check_retry("j", state)
        assert caught.value.violations[0][0] == "STATE"


def test_a_failed_attempt_retries_only_when_transient_and_attempts_are_left() -> None:
    assert after_failure(transient=True, attempt=1, attempt_limit=3) is State.PENDING
    assert after_failure(transient=True, attempt=3, attempt_limit=3) is State.FAILED
    assert after_failure(transient=False, attempt=1, attempt_limit=3) is State.FAILED


def test_a_lost_worker_costs_an_attempt_and_completes_a_cancel() -> None:
    assert after_lost_worker(State.RUNNING, attempt=1, attempt_limit=3) is State.PENDING
    assert after_lost_worker(State.RUNNING, attempt=3, attempt_limit=3) is State.FAILED
    assert after_lost_worker(State.CANCELLING, attempt=3, attempt_limit=3) is State.CANCELLED
    for state in (State.RUNNING, State.CANCELLING):
        assert allowed(state, after_lost_worker(state, attempt=1, attempt_limit=2))


def test_each_run_of_a_job_has_its_own_stable_key() -> None:
    assert run_key("j-1", None) == "job:j-1:input"
    first = run_key("j-1", {"interrupt_id": "abc", "answer": True})
    assert first == run_key("j-1", {"interrupt_id": "abc", "answer": False})
    assert first != run_key("j-1", {"interrupt_id": "abd", "answer": True})
    assert len(run_key("j" * 63, {"interrupt_id": "x" * 128, "answer": 1})) <= 128
