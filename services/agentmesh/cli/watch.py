"""Following a job to its end over WatchJob, across dropped streams.

A watch stream can end early: Envoy or a Job replica restarts, the network drops, or
the per-stream deadline passes on a long job. The follower then opens a new stream with
``after_sequence`` set to the last change it saw, so the service replays what it missed
and no change is shown twice or lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Final

import grpc

from agentmesh.cli.errors import CliError, code_of
from agentmesh.v1 import job_pb2

TERMINAL_STATES: Final = frozenset(
    {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
)

RESUMABLE_CODES: Final = frozenset(
    # INTERNAL: a stream Envoy reset at its deadline ("Stream removed", RST_STREAM).
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL}
)
"""Stream failures that say nothing about the job: open a new stream."""

MAX_FAILED_RESUMES: Final = 8
"""Consecutive resumes that brought no change before the watch gives up."""


def backoff_s(failures: int) -> float:
    """Pause before resume ``failures`` (0 after a stream that brought changes)."""
    return min(0.25 * 2**failures, 5.0) if failures else 0.0


def follow(
    open_stream: Callable[[int], Iterable[job_pb2.JobEvent]],
    on_event: Callable[[job_pb2.JobEvent], None],
    on_resume: Callable[[int, str], None],
    *,
    sleep: Callable[[float], None] = time.sleep,
    max_failed_resumes: int = MAX_FAILED_RESUMES,
) -> job_pb2.Job:
    """Streams the job's changes to ``on_event`` until it ends; returns the final job.

    ``open_stream(after_sequence)`` opens WatchJob. A stream that fails with a code in
    RESUMABLE_CODES, or ends before the job did, is reopened after the last sequence
    seen, with ``on_resume(after_sequence, why)`` told first. Any other error is raised;
    so is the last one after ``max_failed_resumes`` resumes in a row brought nothing
    (a stream that reached its deadline is renewed and not counted: a job may wait
    long without a change).
    """
    after = 0
    failures = 0
    while True:
        brought_changes = False
        renewal = False
        try:
            for event in open_stream(after):
                if event.sequence <= after:
                    continue  # already shown (a replay that overlaps what we saw)
                after = event.sequence
                brought_changes = True
                on_event(event)
                if event.job.state in TERMINAL_STATES:
                    return event.job
            why = "the stream ended before the job did"
            last_error: Exception = CliError(f"watch stopped: {why}")
        except grpc.RpcError as error:
            if code_of(error) not in RESUMABLE_CODES:
                raise
            why = code_of(error).name
            last_error = error
            # Our own per-stream deadline on a long job: renew, it is not a failure.
            renewal = code_of(error) == grpc.StatusCode.DEADLINE_EXCEEDED
        if brought_changes:
            failures = 0
        elif not renewal:
            failures += 1
        if failures > max_failed_resumes:
            raise last_error
        on_resume(after, why)
        sleep(backoff_s(failures))
