"""Change notifications over Redis pub/sub, so a watch wakes when what it follows
changes (a job, a conversation).

Whoever changes a watched record publishes its new sequence on Redis after the change
committed, on the channel of a :class:`Topic` (one per kind of record). Each process
keeps one pattern subscription per topic and wakes the watches of the record that
changed. A notification only says "read again": the change itself is read from
PostgreSQL, and watches also read again every so often (their polling floor), so a
lost notification (Redis restarting) delays a watch but never loses a change.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import redis.asyncio
import redis.exceptions
import structlog

from agentmesh.core.tasks import stop_task

_log = structlog.get_logger("agentmesh.core.changes")

_RECONNECT_S: Final = 1.0


@dataclass(frozen=True)
class Topic:
    """The channels of one kind of record: ``prefix + tenant + ":" + key``."""

    prefix: str
    """e.g. ``agentmesh:job:changed:``; a name from the code, never from a client."""
    what: str
    """What changes, for logs: ``job``, ``conversation``."""

    def channel(self, tenant: str, key: str) -> str:
        """The channel of the tenant's record ``key`` (a tenant never contains ``:``)."""
        return f"{self.prefix}{tenant}:{key}"

    async def publish(
        self, client: redis.asyncio.Redis, tenant: str, key: str, sequence: int
    ) -> None:
        """Tells the watches of the record that it changed; best effort (watches poll
        too)."""
        try:
            await client.publish(self.channel(tenant, key), str(sequence))
        except (redis.exceptions.RedisError, OSError) as exc:
            _log.warning("change not published", what=self.what, key=key, error=repr(exc))


class ChangeFeed:
    """One pattern subscription per process and topic, fanned out to the watches of
    each record."""

    def __init__(self, client: redis.asyncio.Redis, topic: Topic) -> None:
        self._client = client
        self._topic = topic
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts reading notifications (in the background, reconnecting as needed)."""
        self._task = asyncio.create_task(self._read(), name=f"{self._topic.what}-change-feed")

    async def stop(self) -> None:
        """Stops reading."""
        await stop_task(self._task, what=f"{self._topic.what} change feed")

    def notify_local(self, tenant: str, key: str) -> None:
        """Wakes this process's watches of the record at once (the change was made
        here; the Redis notification still tells the other processes)."""
        self._wake(self._topic.channel(tenant, key))

    @contextlib.asynccontextmanager
    async def subscription(self, tenant: str, key: str) -> AsyncIterator[asyncio.Event]:
        """An event set whenever the tenant's record changes (clear it before reading)."""
        channel = self._topic.channel(tenant, key)
        event = asyncio.Event()
        self._waiting.setdefault(channel, set()).add(event)
        try:
            yield event
        finally:
            waiting = self._waiting.get(channel)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiting[channel]

    def _wake(self, channel: str | None = None) -> None:
        groups = self._waiting.values() if channel is None else [self._waiting.get(channel, set())]
        for events in groups:
            for event in events:
                event.set()

    async def _read(self) -> None:
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(self._topic.prefix + "*")
                self._wake()  # changes made while not subscribed: everyone reads again
                async for message in pubsub.listen():
                    channel = message.get("channel")
                    if isinstance(channel, bytes):
                        channel = channel.decode()
                    if isinstance(channel, str):
                        self._wake(channel)
            except (redis.exceptions.RedisError, OSError) as exc:
                _log.warning(
                    "change feed lost; reconnecting", what=self._topic.what, error=repr(exc)
                )
                await asyncio.sleep(_RECONNECT_S)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
