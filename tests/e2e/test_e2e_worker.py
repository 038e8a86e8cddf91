"""A real Dramatiq worker consumes from the real Redis broker."""

from __future__ import annotations

import json
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


def test_worker_log_is_json_lines(stack: DevStack) -> None:
    # Everything the worker's process tree wrote under the launcher (stdout and stderr
    # both go to logs/worker.log); the launcher's own "=== ... start:" banners aside.
    lines = [
        line
        for line in (stack.logs_dir / "worker.log").read_text(errors="replace").splitlines()
        if line.strip() and not line.startswith("=== ")
    ]
    assert any('"worker started"' in line for line in lines), lines
    for line in lines:
        record = json.loads(line)
        assert record["service"] == "worker", line
        assert {"timestamp", "level", "event"} <= record.keys(), line
