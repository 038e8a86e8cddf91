"""Dramatiq actors run by the workers.

Importing this module configures the global broker from the environment, because
Dramatiq binds actors to the broker when they are declared and its CLI imports
this module in every worker process.
"""

from __future__ import annotations

from typing import Final

import dramatiq

from agentmesh.core.settings import Settings
from agentmesh.job.broker import DIAGNOSTICS_QUEUE, PROBE_KEY_PREFIX, configure_broker
from agentmesh.job.worker_middleware import WorkerObservability

_settings = Settings.from_env(service="worker")
broker = configure_broker(_settings)
broker.add_middleware(WorkerObservability(_settings))

PROBE_TTL_S: Final = 300


@dramatiq.actor(queue_name=DIAGNOSTICS_QUEUE, max_retries=0)
def probe_worker(token: str) -> None:
    """Proves a worker consumes from the broker: writes ``token`` back to Redis.

    Operators (and the test suite) enqueue it and wait for the key to appear; it
    touches nothing else.
    """
    broker.client.set(PROBE_KEY_PREFIX + token, "done", ex=PROBE_TTL_S)
