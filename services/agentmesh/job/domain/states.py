"""The job state machine: which change each action may make, and nothing else.

    PENDING → RUNNING → (INPUT_REQUIRED ⇄ RUNNING) → SUCCEEDED | FAILED | CANCELLED
    RUNNING → PENDING                    a failed attempt with attempts left, or a
                                         worker handing the job back (stop, death)
    PENDING | INPUT_REQUIRED → CANCELLED CancelJob, no worker holds the job
    RUNNING → CANCELLING → CANCELLED     CancelJob while a worker runs it
    FAILED | CANCELLED → PENDING         RetryJob, a new attempt

The stores apply each change as a conditional update on the state this module says
the action starts from, so two actions racing on one job cannot both win; the loser
reads the job again and gets this module's answer for the state it found.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import Final

from agentmesh.core.errors import FailedPrecondition
from agentmesh.core.names import JOBS
from agentmesh.v1 import job_pb2


class State(IntEnum):
    """``agentmesh.v1.JobState``, by the numbers stored in ``job.jobs.state``."""

    PENDING = job_pb2.JOB_STATE_PENDING
    RUNNING = job_pb2.JOB_STATE_RUNNING
    INPUT_REQUIRED = job_pb2.JOB_STATE_INPUT_REQUIRED
    SUCCEEDED = job_pb2.JOB_STATE_SUCCEEDED
    FAILED = job_pb2.JOB_STATE_FAILED
    CANCELLED = job_pb2.JOB_STATE_CANCELLED
    CANCELLING = job_pb2.JOB_STATE_CANCELLING

    @property
    def label(self) -> str:
        """The name clients use in filters and read in messages, e.g. ``RUNNING``."""
        return self.name


TERMINAL: Final = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED})
"""A job in these states changes only by RetryJob (FAILED, CANCELLED)."""
ACTIVE: Final = frozenset(State) - TERMINAL
"""States that count towards a tenant's active jobs."""

TRANSITIONS: Final[Mapping[State, frozenset[State]]] = {
    State.PENDING: frozenset({State.RUNNING, State.CANCELLED}),
    State.RUNNING: frozenset(
        {
            State.PENDING,
            State.INPUT_REQUIRED,
            State.SUCCEEDED,
            State.FAILED,
            State.CANCELLING,
        }
    ),
    State.INPUT_REQUIRED: frozenset({State.RUNNING, State.CANCELLED}),
    State.CANCELLING: frozenset({State.CANCELLED}),
    State.SUCCEEDED: frozenset(),
    State.FAILED: frozenset({State.PENDING}),
    State.CANCELLED: frozenset({State.PENDING}),
}
"""Every legal change; anything else is FAILED_PRECONDITION."""


def allowed(current: State, target: State) -> bool:
    """Whether the state machine lets a job in ``current`` become ``target``."""
    return target in TRANSITIONS[current]


def _refusal(job_id: str, state: State, action: str, needs: str) -> FailedPrecondition:
    name = JOBS.format(job_id)
    return FailedPrecondition(
        f"JOB_{state.label}",
        f"{name} is {state.label}; {action} needs {needs}",
        [("STATE", name, f"{action} needs {needs}")],
    )


def cancel_target(job_id: str, state: State) -> State | None:
    """The state CancelJob moves a job in ``state`` to; None when the job is already
    cancelled or being cancelled (returned unchanged); FAILED_PRECONDITION when it
    ended otherwise."""
    if state in (State.PENDING, State.INPUT_REQUIRED):
        return State.CANCELLED  # no worker holds it: cancelled at once
    if state is State.RUNNING:
        return State.CANCELLING  # its worker stops at the run's next step and confirms
    if state in (State.CANCELLING, State.CANCELLED):
        return None
    raise _refusal(job_id, state, "CancelJob", "a job that has not ended")


def check_resume(job_id: str, state: State) -> None:
    """ResumeJob answers an INPUT_REQUIRED job only."""
    if state is not State.INPUT_REQUIRED:
        raise _refusal(job_id, state, "ResumeJob", "a job waiting for input (INPUT_REQUIRED)")


def check_retry(job_id: str, state: State) -> None:
    """RetryJob re-opens a FAILED or CANCELLED job only."""
    if state not in (State.FAILED, State.CANCELLED):
        raise _refusal(job_id, state, "RetryJob", "a FAILED or CANCELLED job")


def after_failure(*, transient: bool, attempt: int, attempt_limit: int) -> State:
    """Where a failed attempt leaves its job: PENDING for another attempt when the
    failure may pass and attempts are left, else FAILED."""
    return State.PENDING if transient and attempt < attempt_limit else State.FAILED


def after_lost_worker(state: State, *, attempt: int, attempt_limit: int) -> State:
    """Where a job goes when its worker's lease expired (the worker died or hung): a
    cancel in progress completes; otherwise the attempt counts as failed (so a job
    that kills every worker that runs it does not run forever)."""
    if state is State.CANCELLING:
        return State.CANCELLED
    return after_failure(transient=True, attempt=attempt, attempt_limit=attempt_limit)
