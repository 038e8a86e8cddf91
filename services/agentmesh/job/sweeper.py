"""The sweeper: what no request does by itself, done by one Job replica at a time.

Each pass (``AGENTMESH_JOB_SWEEP_INTERVAL_S``):

- sends the messages of pending jobs that are due: delayed starts and retries after
  their backoff, and jobs whose message was lost (no worker claimed it within
  ``AGENTMESH_JOB_REDISPATCH_AFTER_S``: Redis restarted, or the send failed);
- hands back the jobs of expired leases: a worker died or hung, so its attempt counts
  as failed (another attempt is scheduled at once, or the job fails when none is
  left), and a cancel waiting on a dead worker completes.

The replica that holds a Redis lock sweeps; the lock expires if that replica dies, so
another takes over within a few passes. Every change is guarded like any other, so
even two sweepers at once (a lock lost mid-pass) change each job once.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Final

import asyncpg  # type: ignore[import-untyped]
import grpc
import redis.asyncio
import redis.exceptions
import structlog
from prometheus_client import Counter
from redis.asyncio.lock import Lock

from agentmesh.core.tasks import stop_task
from agentmesh.job import metrics
from agentmesh.job.broker import JOB_QUEUES, NAMESPACE
from agentmesh.job.convert import error_json
from agentmesh.job.dispatch import Dispatcher
from agentmesh.job.domain.states import State, after_lost_worker
from agentmesh.job.settings import JobSettings
from agentmesh.job.stores.jobs import (
    JOB_CHANGES,
    change_job,
    due_for_dispatch_all_tenants,
    expired_leases_all_tenants,
)

_log = structlog.get_logger("agentmesh.job.sweeper")

LOCK_KEY: Final = "agentmesh:job:sweeper"
BATCH: Final = 500
"""Jobs one pass handles of each kind; the next pass takes the rest."""

LEASE_EXPIRIES: Final = Counter(
    "agentmesh_job_lease_expiries_total",
    "Running jobs whose worker's lease expired (a worker died or hung), by outcome.",
    ("outcome",),
)
DISPATCHED: Final = Counter(
    "agentmesh_job_sweeper_dispatched_total",
    "Job messages the sweeper sent: delayed starts, retries after backoff, lost messages.",
)


class Sweeper:
    """Dispatches due jobs and reaps expired leases while this replica holds the lock."""

    def __init__(
        self,
        settings: JobSettings,
        pool: asyncpg.Pool,
        client: redis.asyncio.Redis,
        dispatcher: Dispatcher,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._redis = client
        self._dispatcher = dispatcher
        self._lock = Lock(
            client,
            LOCK_KEY,
            timeout=max(5.0, 5 * settings.sweep_interval_s),
            thread_local=False,
        )
        self._owner = uuid.uuid4().hex
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts sweeping in the background."""
        self._task = asyncio.create_task(self._run(), name="job-sweeper")

    async def stop(self) -> None:
        """Stops sweeping and gives the lock up."""
        await stop_task(self._task, what="job sweeper")
        with contextlib.suppress(Exception):
            if await self._lock.owned():
                await self._lock.release()

    async def _leader(self) -> bool:
        if await self._lock.owned():
            await self._lock.reacquire()
            return True
        return bool(await self._lock.acquire(blocking=False))

    async def _run(self) -> None:
        while True:
            try:
                await self._measure_queues()
                if await self._leader():
                    await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an outage: the next pass tries again
                _log.warning("sweep failed", error=repr(exc))
            await asyncio.sleep(self._settings.sweep_interval_s)

    async def _measure_queues(self) -> None:
        for priority, (queue, _, _) in JOB_QUEUES.items():
            depth = await self._redis.llen(f"{NAMESPACE}:{queue}")
            metrics.QUEUE_DEPTH.labels(metrics.priority_label(priority)).set(depth)

    async def sweep(self) -> None:
        """One pass: hand back expired leases, then send what is due."""
        for lost in await expired_leases_all_tenants(self._pool, limit=BATCH):
            await self._reap(lost)
        due = await due_for_dispatch_all_tenants(
            self._pool,
            redispatch_after_s=self._settings.redispatch_after_s,
            lease_s=self._settings.lease_s,
            limit=BATCH,
        )
        for job in due:
            DISPATCHED.inc()
            await self._dispatcher.send(
                job["tenant"],
                job["id"],
                job["attempt"],
                job["priority"],
                traceparent=job["traceparent"],
            )

    async def _reap(self, lost: asyncpg.Record) -> None:
        tenant, job_id = lost["tenant"], lost["id"]
        state = State(lost["state"])
        target = after_lost_worker(
            state, attempt=lost["attempt"], attempt_limit=lost["attempt_limit"]
        )
        message = "the worker running the job stopped renewing its lease (it died or hung)"
        sets: list[tuple[str, tuple[object, ...]]] = [
            ("state = {}", (int(target),)),
            ("lease_owner = NULL", ()),
            ("lease_expire_time = NULL", ()),
        ]
        if target is State.PENDING:
            sets += [
                ("attempt = attempt + 1", ()),
                ("schedule_time = now()", ()),
                ("dispatch_time = now()", ()),
                (
                    "error = {}::jsonb",
                    (error_json(grpc.StatusCode.UNAVAILABLE.value[0], message, "WORKER_LOST"),),
                ),
            ]
        elif target is State.FAILED:
            sets += [
                ("end_time = now()", ()),
                (
                    "error = {}::jsonb",
                    (error_json(grpc.StatusCode.UNAVAILABLE.value[0], message, "WORKER_LOST"),),
                ),
            ]
        else:  # a cancel whose worker died: it is cancelled now
            sets += [
                ("end_time = now()", ()),
                (
                    "error = {}::jsonb",
                    (
                        error_json(
                            grpc.StatusCode.CANCELLED.value[0],
                            "cancelled by a client",
                            "JOB_CANCELLED",
                        ),
                    ),
                ),
            ]
        changed = await change_job(
            self._pool,
            tenant,
            job_id,
            states=[state],
            when=[
                ("attempt = {}", (lost["attempt"],)),
                ("fence = {}", (lost["fence"],)),
                ("lease_expire_time < now()", ()),
            ],
            sets=sets,
        )
        if changed is None:
            return  # the worker renewed, or something else changed it first
        LEASE_EXPIRIES.labels(target.name.lower()).inc()
        _log.warning("job lease expired", job_id=job_id, tenant=tenant, now=target.name)
        await JOB_CHANGES.publish(self._redis, tenant, job_id, changed["sequence"])
        if target is State.PENDING:
            metrics.RETRIES.labels("lost_worker").inc()
            await self._dispatcher.send(
                tenant,
                job_id,
                changed["attempt"],
                changed["priority"],
                traceparent=lost["traceparent"],
            )
        else:
            metrics.finished(target, changed["create_time"])
