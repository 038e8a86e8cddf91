"""Dramatiq actors run by the workers, declared on a broker by :func:`declare_actors`.

Nothing happens at import: the worker's entry point (``agentmesh.job.worker:boot``)
builds the broker from the settings and declares the actors on it, in every worker
process, before Dramatiq consumes.
"""

from __future__ import annotations

from typing import Final

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from agentmesh.job.broker import DIAGNOSTICS_QUEUE, JOB_QUEUES, PROBE_KEY_PREFIX
from agentmesh.job.dispatch import TRACEPARENT
from agentmesh.job.worker_resources import JobResources

PROBE_TTL_S: Final = 300
"""How long the probe's answer stays in Redis."""


def declare_actors(
    broker: RedisBroker, resources: JobResources | None = None, *, time_limit_s: float = 3600.0
) -> dict[str, dramatiq.Actor[..., None]]:
    """Declares every actor on ``broker``; returns them by actor name. The job actors
    (one per priority queue) need ``resources``; an attempt longer than
    ``time_limit_s`` is stopped by Dramatiq (its own deadline comes first)."""

    def probe_worker(token: str) -> None:
        """Proves a worker consumes from the broker: writes ``token`` back to Redis.

        Operators (and the test suite) enqueue it and wait for the key to appear; it
        touches nothing else.
        """
        broker.client.set(PROBE_KEY_PREFIX + token, "done", ex=PROBE_TTL_S)

    probe = dramatiq.actor(
        actor_name="probe_worker", queue_name=DIAGNOSTICS_QUEUE, max_retries=0, broker=broker
    )(probe_worker)
    actors: dict[str, dramatiq.Actor[..., None]] = {probe.actor_name: probe}
    if resources is None:
        return actors

    async def run_job(tenant: str, job_id: str, attempt: int) -> None:
        """Runs the job's attempt if it is still there to run (the job row decides;
        a stale or duplicate message does nothing)."""
        message = CurrentMessage.get_current_message()
        traceparent = str(message.options.get(TRACEPARENT, "")) if message is not None else ""
        executor = await resources.executor()
        await executor.run(tenant, job_id, attempt, traceparent)

    for queue, actor_name, priority in JOB_QUEUES.values():
        actor = dramatiq.actor(
            actor_name=actor_name,
            queue_name=queue,
            priority=priority,
            max_retries=0,  # retries are the job's policy, decided by the job row
            time_limit=int(time_limit_s * 1000),
            broker=broker,
        )(run_job)
        actors[actor.actor_name] = actor
    return actors
