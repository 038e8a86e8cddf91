"""Change notifications of jobs, so a watch wakes when its job changes.

Whoever changes a job (the service, a worker, the sweeper) publishes its new sequence
on Redis after the change committed. Each Job process keeps one pattern subscription
for all jobs and wakes the watches of the job that changed. A notification only says
"read again": the change itself is read from PostgreSQL, and watches also read again
every ``AGENTMESH_JOB_WATCH_POLL_S``, so a lost notification (Redis restarting) delays
a watch but never loses a change.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Final

import redis.asyncio
import redis.exceptions
import structlog

_log = structlog.get_logger("agentmesh.job.changes")

PREFIX: Final = "agentmesh:job:changed:"
"""Channel of a job's changes: ``PREFIX + tenant + ":" + job id``."""
_RECONNECT_S: Final = 1.0


def channel(tenant: str, job_id: str) -> str:
    """The channel of the tenant's job (a tenant never contains ``:``)."""
    return f"{PREFIX}{tenant}:{job_id}"


async def publish(client: redis.asyncio.Redis, tenant: str, job_id: str, sequence: int) -> None:
    """Tells the watches of the job that it changed; best effort (watches poll too)."""
    try:
        await client.publish(channel(tenant, job_id), str(sequence))
    except (redis.exceptions.RedisError, OSError) as exc:
        _log.warning("job change not published", job_id=job_id, error=repr(exc))


class ChangeFeed:
    """One pattern subscription per process, fanned out to the watches of each job."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts reading notifications (in the background, reconnecting as needed)."""
        self._task = asyncio.create_task(self._read(), name="job-change-feed")

    async def stop(self) -> None:
        """Stops reading."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.asynccontextmanager
    async def subscription(self, tenant: str, job_id: str) -> AsyncIterator[asyncio.Event]:
        """An event set whenever the tenant's job changes (clear it before reading)."""
        key = channel(tenant, job_id)
        event = asyncio.Event()
        self._waiting.setdefault(key, set()).add(event)
        try:
            yield event
        finally:
            waiting = self._waiting.get(key)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiting[key]

    def _wake(self, key: str | None = None) -> None:
        groups = self._waiting.values() if key is None else [self._waiting.get(key, set())]
        for events in groups:
            for event in events:
                event.set()

    async def _read(self) -> None:
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(PREFIX + "*")
                self._wake()  # changes made while not subscribed: everyone reads again
                async for message in pubsub.listen():
                    key = message.get("channel")
                    if isinstance(key, bytes):
                        key = key.decode()
                    if isinstance(key, str):
                        self._wake(key)
            except (redis.exceptions.RedisError, OSError) as exc:
                _log.warning("job change feed lost; reconnecting", error=repr(exc))
                await asyncio.sleep(_RECONNECT_S)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
