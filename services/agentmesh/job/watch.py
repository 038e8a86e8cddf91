"""WatchJob: the job's current state (or the changes after a given one), then every
change until the job ends.

The changes are read from ``job.events`` (the latest ``EVENTS_KEPT`` of each job), so
a reconnecting client misses nothing; the watch wakes on the job's change
notification (``core/changes.py``) and reads again at least every
``AGENTMESH_JOB_WATCH_POLL_S`` in case a notification was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]

from agentmesh.core.errors import NotFound, OutOfRange
from agentmesh.core.names import JOBS
from agentmesh.core.storage import timestamp
from agentmesh.job.convert import job_proto
from agentmesh.job.deps import JobDeps
from agentmesh.job.domain.states import TERMINAL, State
from agentmesh.job.stores.jobs import get_job, list_events
from agentmesh.v1 import job_pb2

BATCH: Final = 100
"""Changes read at once while catching up."""


def _current(row: asyncpg.Record) -> job_pb2.JobEvent:
    return job_pb2.JobEvent(
        sequence=row["sequence"], job=job_proto(row), time=timestamp(row["update_time"])
    )


def _replayed(event: asyncpg.Record, row: asyncpg.Record) -> tuple[job_pb2.JobEvent, State]:
    snapshot: Mapping[str, Any] = json.loads(event["snapshot"])
    job = job_proto(snapshot, immutable=row)
    wire = job_pb2.JobEvent(sequence=event["sequence"], job=job, time=timestamp(event["time"]))
    return wire, State(snapshot["state"])


async def watch_job(
    deps: JobDeps, tenant: str, job_id: str, after: int
) -> AsyncIterator[job_pb2.JobEvent]:
    """The tenant's job's events after sequence ``after`` (0: its current state first),
    until one carries a terminal state."""
    with deps.watches.hold(tenant):
        async with deps.changes.subscription(tenant, job_id) as changed:
            row = await get_job(deps.pool, tenant, job_id)
            if row is None:
                raise NotFound(JOBS.resource_type, JOBS.format(job_id))
            if after > row["sequence"]:
                raise OutOfRange(
                    "after_sequence",
                    f"{JOBS.format(job_id)} has had {row['sequence']} changes; resume from"
                    " a sequence you received",
                )
            last = after
            if after == 0:
                yield _current(row)
                last = row["sequence"]
            ended = State(row["state"]) in TERMINAL and last >= row["sequence"]
            while not ended:
                changed.clear()  # before reading: a change from now on wakes us again
                events = await list_events(deps.pool, tenant, job_id, after=last, limit=BATCH)
                if events and events[0]["sequence"] > last + 1:
                    # What the client missed is no longer kept: the current state
                    # says all of it.
                    row = await get_job(deps.pool, tenant, job_id)
                    if row is None:
                        raise NotFound(JOBS.resource_type, JOBS.format(job_id))
                    yield _current(row)
                    last = row["sequence"]
                    ended = State(row["state"]) in TERMINAL
                    continue
                for event in events:
                    wire, state = _replayed(event, row)
                    yield wire
                    last = event["sequence"]
                    if state in TERMINAL:
                        ended = True
                        break
                if not events:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(deps.settings.watch_poll_s):
                            await changed.wait()
