"""The Dramatiq broker (Redis) shared by the Job service (enqueue) and its workers."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO

from agentmesh.core.settings import Settings

NAMESPACE = "agentmesh"
"""Prefix of every Dramatiq key in Redis, so the broker shares Redis with Memory safely."""

DIAGNOSTICS_QUEUE = "diagnostics"
"""Queue of the worker probe actor (``probe_worker``, see ``agentmesh.job.actors``)."""
PROBE_KEY_PREFIX = "agentmesh:worker:probe:"
"""The probe actor writes ``PROBE_KEY_PREFIX + token`` to Redis when it ran."""


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
