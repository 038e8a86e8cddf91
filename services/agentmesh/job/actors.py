"""Dramatiq actors run by the workers, declared on a broker by :func:`declare_actors`.

Nothing happens at import: the worker's entry point (``agentmesh.job.worker:boot``)
builds the broker from the settings and declares the actors on it, in every worker
process, before Dramatiq consumes.
"""

from __future__ import annotations

from typing import Final

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from agentmesh.job.broker import DIAGNOSTICS_QUEUE, PROBE_KEY_PREFIX

PROBE_TTL_S: Final = 300
"""How long the probe's answer stays in Redis."""


def declare_actors(broker: RedisBroker) -> dict[str, dramatiq.Actor[..., None]]:
    """Declares every actor on ``broker``; returns them by actor name."""

    def probe_worker(token: str) -> None:
        """Proves a worker consumes from the broker: writes ``token`` back to Redis.

        Operators (and the test suite) enqueue it and wait for the key to appear; it
        touches nothing else.
        """
        broker.client.set(PROBE_KEY_PREFIX + token, "done", ex=PROBE_TTL_S)

    probe = dramatiq.actor(
        actor_name="probe_worker", queue_name=DIAGNOSTICS_QUEUE, max_retries=0, broker=broker
    )(probe_worker)
    return {probe.actor_name: probe}
