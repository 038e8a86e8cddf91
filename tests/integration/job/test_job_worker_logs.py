"""The real worker (Dramatiq's supervisor and its worker process) writes only JSON lines.

`python -m agentmesh.job.worker` runs against a real redis-server, processes a probe
message and stops on SIGTERM; everything the process tree wrote on stdout and stderr,
from Dramatiq's first line to its last, must be one JSON object per line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from agentmesh.devstack.env import child_env
from agentmesh.devstack.redis import RedisServer
from agentmesh.job.broker import DIAGNOSTICS_QUEUE, NAMESPACE, PROBE_KEY_PREFIX

pytestmark = pytest.mark.integration

KEYS = {"timestamp", "level", "event", "service"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Polls ``check``; a bound on waiting, not an assertion on how long it took."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), free_port(), appendonly=False)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def worker_output(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Runs the worker through start, one message and SIGTERM; returns what it wrote."""
    out_dir = tmp_path_factory.mktemp("worker")
    stdout_path, stderr_path = out_dir / "stdout", out_dir / "stderr"
    env = child_env(
        os.environ,
        {
            "AGENTMESH_REDIS_URL": redis_url,
            "AGENTMESH_METRICS_PORT": "0",
            "AGENTMESH_LOG_LEVEL": "info",
            "AGENTMESH_WORKER_THREADS": "2",
            # Job runs need these; nothing listens there, and the worker waits for its
            # database in the background while it serves other queues.
            "AGENTMESH_DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/none",
            "AGENTMESH_AGENT_ADDR": f"127.0.0.1:{free_port()}",
            "AGENTMESH_AUTH_HS256_SECRET": "s" * 32,
        },
        drop_otlp=False,
    )
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "agentmesh.job.worker"],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=env,
            start_new_session=True,  # the group can be killed as a whole if it hangs
        )

    def written() -> str:
        return stdout_path.read_text() + stderr_path.read_text()

    try:
        wait_for(lambda: "Worker process is ready for action." in written(), "worker ready")
        token = uuid.uuid4().hex
        broker = RedisBroker(url=redis_url, namespace=NAMESPACE)
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
        client = redis.Redis.from_url(redis_url)
        try:
            wait_for(lambda: client.get(PROBE_KEY_PREFIX + token) == b"done", "probe processed")
        finally:
            client.close()
        os.kill(process.pid, signal.SIGTERM)  # the supervisor only; it stops its worker
        assert process.wait(timeout=60) == 0, written()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    return {"stdout": stdout_path.read_text(), "stderr": stderr_path.read_text()}


def records(worker_output: dict[str, str]) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for text in worker_output.values()
        for line in text.splitlines()
        if line.strip()
    ]


def test_every_line_of_the_process_tree_is_json(worker_output: dict[str, str]) -> None:
    lines = [line for text in worker_output.values() for line in text.splitlines()]
    assert lines, "the worker wrote nothing"
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}\n--- all output ---\n{worker_output}")
        assert isinstance(record, dict), line
        assert record.keys() >= KEYS, line
        assert record["service"] == "worker", line
        assert record["timestamp"].endswith("Z"), line


def test_supervisor_and_worker_process_lines_are_both_there(
    worker_output: dict[str, str],
) -> None:
    seen = records(worker_output)
    events = [record["event"] for record in seen]
    loggers = {record.get("logger") for record in seen}
    # Dramatiq's supervisor: the first thing it says, and how it stops its workers.
    assert any(str(event).startswith("Dramatiq ") for event in events), events
    assert "Sending signal 'SIGTERM' to subprocesses..." in events
    assert "dramatiq.MainProcess" in loggers
    # The worker process: Dramatiq's own lines, middleware started before ours, ours.
    assert "dramatiq.WorkerProcess(0)" in loggers
    assert "Starting event loop..." in events  # the AsyncIO middleware, first to boot
    assert "worker started" in events
    processed = [r for r in seen if r["event"] == "message processed"]
    assert processed, events
    assert processed[0]["actor"] == "probe_worker"
    assert "worker stopping" in events


def test_the_tree_writes_one_stream(worker_output: dict[str, str]) -> None:
    # Dramatiq relays its worker processes' output to the supervisor's stderr, and the
    # supervisor logs there too, so one stream holds the whole tree in order.
    assert worker_output["stdout"] == ""
    assert worker_output["stderr"]


def test_a_configuration_error_is_one_line_and_status_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMESH_")}
    result = subprocess.run(
        [sys.executable, "-m", "agentmesh.job.worker"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "agentmesh-worker: configuration error: worker: missing required setting(s): "
        "AGENTMESH_REDIS_URL, AGENTMESH_DATABASE_URL, AGENTMESH_AGENT_ADDR"
    ]
