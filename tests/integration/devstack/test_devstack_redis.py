"""RedisServer: starts, answers PING, persists with AOF, stops and frees its port."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import redis

from agentmesh.devstack._proc import pid_alive, port_is_listening
from agentmesh.devstack.redis import RedisServer

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_start_ping_persist_stop(tmp_path: Path) -> None:
    port = free_port()
    server = RedisServer(tmp_path / "redis", port)
    server.start()
    try:
        pid = server.pid
        assert pid is not None
        assert server.ping()
        client = redis.Redis.from_url(server.url)
        client.set("kept", "1")
        client.close()
    finally:
        server.stop()
    assert not port_is_listening(port)
    assert not pid_alive(pid)

    # AOF persistence: the key survives a restart on the same data dir.
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        assert client.get("kept") == b"1"
        client.close()
    finally:
        server.stop()
    assert not port_is_listening(port)
