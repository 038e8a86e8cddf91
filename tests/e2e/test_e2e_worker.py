"""A real Dramatiq worker consumes from the real Redis broker."""

from __future__ import annotations

import time
import uuid

import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from agentmesh.devstack.stack import DevStack
from agentmesh.job.broker import DIAGNOSTICS_QUEUE, NAMESPACE, PROBE_KEY_PREFIX


def test_worker_processes_a_probe_message(stack: DevStack) -> None:
    token = uuid.uuid4().hex
    broker = RedisBroker(url=stack.redis_url, namespace=NAMESPACE)
    try:
        broker.enqueue(
            Message(
                queue_name=DIAGNOSTICS_QUEUE,
                actor_name="probe_worker",
                args=(token,),
                kwargs={},
                options={},
            )
        )
    finally:
        broker.close()
    client = redis.Redis.from_url(stack.redis_url)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if client.get(PROBE_KEY_PREFIX + token) == b"done":
                return
            time.sleep(0.1)
        raise AssertionError(
            f"the worker did not process the probe; log:\n{stack.log_tail('worker')}"
        )
    finally:
        client.close()
