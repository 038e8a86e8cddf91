"""The Dramatiq broker (Redis) shared by the Job service (enqueue) and its workers."""

from __future__ import annotations

from typing import Final

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO

from agentmesh.core.settings import Settings
from agentmesh.v1 import job_pb2

NAMESPACE = "agentmesh"
"""Prefix of every Dramatiq key in Redis, so the broker shares Redis with Memory safely."""

DIAGNOSTICS_QUEUE = "diagnostics"
"""Queue of the worker probe actor (``probe_worker``, see ``agentmesh.job.actors``)."""
PROBE_KEY_PREFIX = "agentmesh:worker:probe:"
"""The probe actor writes ``PROBE_KEY_PREFIX + token`` to Redis when it ran."""


JOB_QUEUES: Final[dict[int, tuple[str, str, int]]] = {
    job_pb2.JOB_PRIORITY_HIGH: ("jobs-high", "run_job_high", 0),
    job_pb2.JOB_PRIORITY_DEFAULT: ("jobs-default", "run_job", 10),
    job_pb2.JOB_PRIORITY_LOW: ("jobs-low", "run_job_low", 20),
}
"""Per job priority: its queue, the actor that runs it there, and the actor's Dramatiq
priority (lower runs first). A worker consumes every queue and takes the prefetched
message of the most urgent actor first, so high-priority jobs drain first."""


def job_queue(priority: int) -> tuple[str, str, int]:
    """The queue, actor and Dramatiq priority of a job of ``priority``
    (unspecified: default)."""
    return JOB_QUEUES.get(priority, JOB_QUEUES[job_pb2.JOB_PRIORITY_DEFAULT])


def client_broker(settings: Settings) -> RedisBroker:
    """A broker the Job service only sends with (no worker runs on it): Dramatiq's
    global broker is left alone."""
    settings.require("redis_url")
    broker = RedisBroker(url=settings.redis_url, namespace=NAMESPACE)
    for queue, _, _ in JOB_QUEUES.values():
        broker.declare_queue(queue)
    return broker


def configure_broker(settings: Settings) -> RedisBroker:
    """Builds the Redis broker for ``settings.redis_url`` and makes it Dramatiq's global
    one (Dramatiq's CLI takes the worker's broker from there). Called by entry points
    only, never at import."""
    settings.require("redis_url")
    broker = RedisBroker(url=settings.redis_url, namespace=NAMESPACE)
    # Actors may be coroutines (agent runs are async); AsyncIO gives each worker
    # process one event loop thread for them.
    broker.add_middleware(AsyncIO())
    dramatiq.set_broker(broker)
    return broker
