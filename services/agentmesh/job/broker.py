"""The Dramatiq broker (Redis) shared by the Job service (enqueue) and its workers."""

from __future__ import annotations

import time
from typing import Any, Final

import dramatiq
import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import compute_backoff
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message
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


WAKE_KEPT: Final = 64
"""Most wake-ups kept for a queue nobody consumes (each costs a consumer one fetch)."""
WAKE_TTL_S: Final = 3600
"""A queue's wake-up list disappears this long after its last send."""


def wake_key(namespace: str, queue_name: str) -> str:
    """The Redis list a send pushes to and an idle consumer of the queue blocks on."""
    return f"{namespace}:wake:{queue_name}"


class PromptRedisBroker(RedisBroker):
    """Dramatiq's Redis broker whose idle consumers wake as soon as a message is sent.

    Dramatiq's Redis consumer polls: after each empty fetch it sleeps with an
    exponential backoff (5 ms doubling, jittered) up to the worker timeout (1 s), so a
    message sent to an idle worker waited tens to hundreds of milliseconds for its
    fetch. Here every send also pushes to the queue's wake list (one pipelined round
    trip), and an idle consumer blocks on that list (BLPOP) for its backoff instead of
    sleeping: it fetches at once when a message arrives and polls no more often than
    before when none does. A wake-up is a hint only; messages stay where Dramatiq keeps
    them, so a lost or stale wake-up costs at most one poll interval or one empty
    fetch.
    """

    def __init__(self, *, url: str | None, namespace: str) -> None:
        super().__init__(url=url, namespace=namespace)  # type: ignore[no-untyped-call]

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _PromptConsumer

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        sent = super().enqueue(message, delay=delay)
        if delay is None:  # a delayed message is not due yet: nobody needs waking
            key = wake_key(self.namespace, sent.queue_name)
            with self.client.pipeline(transaction=False) as pipe:
                pipe.lpush(key, b"1")
                pipe.ltrim(key, 0, WAKE_KEPT - 1)
                pipe.expire(key, WAKE_TTL_S)
                pipe.execute()
        return sent


class _PromptConsumer(_RedisConsumer):
    """Dramatiq 2.2's ``_RedisConsumer.__next__`` with its idle sleep replaced by a
    bounded wait on the queue's wake list (see :class:`PromptRedisBroker`)."""

    def __next__(self) -> MessageProxy | None:
        try:
            while True:
                try:
                    data = self.message_cache.pop(0)
                    if data is None:
                        continue
                    self.misses = 0
                    message = Message.decode(data)
                    self.queued_message_ids.add(message.message_id)
                    return MessageProxy(message)
                except IndexError:
                    messages = []
                    room = self.outstanding_message_count < self.prefetch
                    if room:
                        self.message_cache = messages = self.broker.do_fetch(
                            self.queue_name, self.prefetch - self.outstanding_message_count
                        )
                    if not messages:
                        self.misses, backoff_ms = compute_backoff(
                            self.misses, max_backoff=self.timeout
                        )
                        if room:
                            # Only a consumer with room takes a wake-up: a full one
                            # would swallow it and fetch nothing.
                            key = wake_key(self.broker.namespace, self.queue_name)
                            self.broker.client.blpop([key], timeout=backoff_ms / 1000)
                        else:
                            time.sleep(backoff_ms / 1000)
                        return None
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None


def job_queue(priority: int) -> tuple[str, str, int]:
    """The queue, actor and Dramatiq priority of a job of ``priority``
    (unspecified: default)."""
    return JOB_QUEUES.get(priority, JOB_QUEUES[job_pb2.JOB_PRIORITY_DEFAULT])


def client_broker(settings: Settings) -> RedisBroker:
    """A broker the Job service only sends with (no worker runs on it): Dramatiq's
    global broker is left alone."""
    settings.require("redis_url")
    broker = PromptRedisBroker(url=settings.redis_url, namespace=NAMESPACE)
    for queue, _, _ in JOB_QUEUES.values():
        broker.declare_queue(queue)
    return broker


def configure_broker(settings: Settings) -> RedisBroker:
    """Builds the Redis broker for ``settings.redis_url`` and makes it Dramatiq's global
    one (Dramatiq's CLI takes the worker's broker from there). Called by entry points
    only, never at import."""
    settings.require("redis_url")
    broker = PromptRedisBroker(url=settings.redis_url, namespace=NAMESPACE)
    # Actors may be coroutines (agent runs are async); AsyncIO gives each worker
    # process one event loop thread for them.
    broker.add_middleware(AsyncIO())
    dramatiq.set_broker(broker)
    return broker
