"""The Job service's and its workers' Prometheus metrics, declared once.

Attempts by outcome and their duration are the workers' (``execution.py``); lease
expiries and dispatches are the sweeper's; the rest are counted wherever the change
they count is made (a cancel of a pending job ends it in the service, a failed
attempt in a worker).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from prometheus_client import Counter, Gauge, Histogram

from agentmesh.job.domain.states import State
from agentmesh.v1 import job_pb2

CREATED: Final = Counter("agentmesh_job_created_total", "Jobs created, by priority.", ("priority",))
FINISHED: Final = Counter(
    "agentmesh_job_finished_total",
    "Jobs that reached a terminal state (succeeded, failed, cancelled).",
    ("state",),
)
DURATION: Final = Histogram(
    "agentmesh_job_duration_seconds",
    "Time from a job's creation to its terminal state, by that state.",
    ("state",),
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 86_400),
)
RETRIES: Final = Counter(
    "agentmesh_job_retries_total",
    "New attempts of jobs: automatic (a transient failure, a lost worker) or asked for (RetryJob).",
    ("cause",),
)
QUEUE_DEPTH: Final = Gauge(
    "agentmesh_job_queue_depth",
    "Messages waiting in each priority's Dramatiq queue (read by every Job replica).",
    ("priority",),
)


PRIORITY_LABELS: Final[dict[int, str]] = {
    job_pb2.JOB_PRIORITY_HIGH: "high",
    job_pb2.JOB_PRIORITY_DEFAULT: "default",
    job_pb2.JOB_PRIORITY_LOW: "low",
}


def priority_label(priority: int) -> str:
    """The metrics label of a job priority."""
    return PRIORITY_LABELS.get(priority, "default")


def finished(state: State, created: datetime) -> None:
    """Counts a job that just reached ``state`` (terminal) and its lifetime."""
    FINISHED.labels(state.name.lower()).inc()
    DURATION.labels(state.name.lower()).observe(
        max(0.0, (datetime.now(UTC) - created).total_seconds())
    )
