"""A background turn: the turn runs as a Job of the chosen agent, created as the
caller once per turn (``domain/background.py``), and its changes are relayed as the
turn's events until the job ends; the job's result is the turn's answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from google.rpc import code_pb2, status_pb2

from agentmesh.conductor.domain.background import (
    JOB_ENDS,
    answer_parts,
    job_failure,
    job_request_id,
)
from agentmesh.conductor.downstream import Downstream
from agentmesh.conductor.turn_model import Outcome, TurnRequest
from agentmesh.core.names import AGENTS, SESSIONS
from agentmesh.v1 import agent_pb2, conductor_pb2, job_pb2

Emit = Callable[..., Awaitable[None]]


async def run_as_job(
    downstream: Downstream,
    emit: Emit,
    request: TurnRequest,
    turn_id: str,
    outcome: Outcome,
    *,
    metadata: tuple[tuple[str, str], ...],
    timeout_s: float,
    call_timeout_s: float,
    on_job: Callable[[str], Any],
) -> Outcome:
    """Creates the turn's job (``on_job`` learns its name), relays its changes until
    it ends, and fills ``outcome`` with its result."""
    jobs = downstream.jobs
    assert jobs is not None  # the servicer refuses background turns without it
    job = await jobs.CreateJob(
        job_pb2.CreateJobRequest(
            job=job_pb2.Job(
                agent=AGENTS.format(outcome.agent_id),
                input=request.input,
                parts=request.parts,
                session=SESSIONS.format(request.session_id),
            ),
            request_id=job_request_id(turn_id),
        ),
        metadata=metadata,
        timeout=call_timeout_s,
    )
    on_job(job.name)
    await emit(job_created=conductor_pb2.JobCreated(job=job.name, snapshot=job))
    call = jobs.WatchJob(
        job_pb2.WatchJobRequest(name=job.name), metadata=metadata, timeout=timeout_s
    )
    last = job
    try:
        async for event in call:
            await emit(job_event=event)
            last = event.job
            if last.state in JOB_ENDS:
                break
    finally:
        call.cancel()
    outcome.usage = last.usage
    if last.state not in JOB_ENDS:
        outcome.error = status_pb2.Status(
            code=code_pb2.UNAVAILABLE,
            message=f"the watch of {job.name} ended before the job; watch the job itself",
        )
        return outcome
    outcome.error = job_failure(last)
    if outcome.error is None:
        outcome.result = agent_pb2.RunResult(
            status=agent_pb2.RUN_STATUS_COMPLETED,
            parts=answer_parts(last.result),
            output=last.result,
            usage=last.usage,
        )
    return outcome
