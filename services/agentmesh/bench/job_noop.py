"""The raw Dramatiq baseline of the `job` bench: a no-op async actor on a plain
``RedisBroker`` (Dramatiq's defaults, our namespace), run by Dramatiq's own CLI with the
job worker's configuration (one process, the same threads):

    python -m dramatiq agentmesh.bench.job_noop:boot --processes 1 --threads 8

Nothing happens at import; ``boot`` reads the Redis URL from ``AGENTMESH_REDIS_URL``.
"""

from __future__ import annotations

import os
from typing import Final

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO

from agentmesh.job.broker import NAMESPACE

QUEUE: Final = "bench-noop"
ACTOR: Final = "bench_noop"


def raw_broker(redis_url: str) -> RedisBroker:
    """Dramatiq's Redis broker as it comes, in our namespace, with the AsyncIO
    middleware (the job actors are coroutines too)."""
    broker = RedisBroker(url=redis_url, namespace=NAMESPACE)
    broker.add_middleware(AsyncIO())
    broker.declare_queue(QUEUE)
    return broker


def boot() -> None:
    """Dramatiq's broker argument: the raw broker and the no-op actor on it."""
    broker = raw_broker(os.environ["AGENTMESH_REDIS_URL"])
    dramatiq.set_broker(broker)

    async def bench_noop() -> None:
        """Does nothing: what remains is Dramatiq's own cost per message."""

    dramatiq.actor(actor_name=ACTOR, queue_name=QUEUE, max_retries=0, broker=broker)(bench_noop)


def noop_message() -> dramatiq.Message[None]:
    return dramatiq.Message(queue_name=QUEUE, actor_name=ACTOR, args=(), kwargs={}, options={})
