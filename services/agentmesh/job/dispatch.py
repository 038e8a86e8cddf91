"""Sending a job's message to the workers (Dramatiq over Redis).

The job row is the truth; a message only says "job X, attempt N is ready". Sending is
best effort after the row is committed: when Redis is down the job stays PENDING and
the sweeper sends it again (``AGENTMESH_JOB_REDISPATCH_AFTER_S``), and a duplicate
message is harmless because a worker must claim the attempt before it runs.
"""

from __future__ import annotations

import asyncio
from typing import Final

import dramatiq
import redis.exceptions
import structlog
from dramatiq.brokers.redis import RedisBroker

from agentmesh.core.context import current_trace_id
from agentmesh.job.broker import job_queue

_log = structlog.get_logger("agentmesh.job.dispatch")

TRACEPARENT: Final = "agentmesh_traceparent"
"""Message option carrying the W3C trace context of the call that created the work."""


class Dispatcher:
    """Sends job messages with Dramatiq's own Redis broker (its client is blocking, so
    each send runs in a worker thread, off the event loop)."""

    def __init__(self, broker: RedisBroker) -> None:
        self._broker = broker

    async def send(
        self, tenant: str, job_id: str, attempt: int, priority: int, *, traceparent: str = ""
    ) -> bool:
        """Sends the attempt's message; False (logged) when the broker is unreachable."""
        queue, actor, _ = job_queue(priority)
        options = {TRACEPARENT: traceparent} if traceparent else {}
        message: dramatiq.Message[None] = dramatiq.Message(
            queue_name=queue,
            actor_name=actor,
            args=(tenant, job_id, attempt),
            kwargs={},
            options=options,
        )
        try:
            await asyncio.to_thread(self._broker.enqueue, message)
        except (redis.exceptions.RedisError, OSError) as exc:
            _log.warning(
                "job message not sent; the sweeper sends it again",
                job_id=job_id,
                attempt=attempt,
                error=repr(exc),
                trace_id=current_trace_id(),
            )
            return False
        return True

    def close(self) -> None:
        """Closes the broker's Redis connections."""
        self._broker.close()
