"""``serve`` as a real process: JSON logs on stdout, drain and clean exit on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = pytest.mark.integration

# The smallest service: no servicer of its own, one on_stop hook that logs.
SERVICE_MAIN = """
import asyncio

import structlog

from agentmesh.core.server import ServiceSpec, serve
from agentmesh.core.settings import Settings


async def main() -> None:
    async def close_resources() -> None:
        structlog.get_logger().info("resources closed")

    spec = ServiceSpec(
        name="memory",
        service_names=["test.v1.Probe"],
        register=lambda server: None,
        on_stop=[close_resources],
    )
    await serve(Settings.from_env(service="memory"), spec)


asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_sigterm_drains_and_exits_cleanly_with_json_logs() -> None:
    port = free_port()
    environ = {
        **os.environ,
        "AGENTMESH_GRPC_PORT": str(port),
        "AGENTMESH_METRICS_PORT": "0",
        "AGENTMESH_AUTH_HS256_SECRET": "process-test-secret-at-least-32-bytes",
        "AGENTMESH_DRAIN_GRACE_S": "2",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SERVICE_MAIN,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 20
            while True:
                try:
                    response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    break
                except grpc.aio.AioRpcError:
                    assert process.returncode is None, "service exited at start"
                    assert time.monotonic() < deadline, "service never answered health checks"
                    await asyncio.sleep(0.1)
            assert response.status == health_pb2.HealthCheckResponse.SERVING

        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert process.returncode == 0, stderr.decode()
    lines = [json.loads(line) for line in stdout.decode().splitlines()]
    assert all(line["service"] == "memory" and "timestamp" in line for line in lines)
    events = [line["event"] for line in lines]
    expected = ["server started", "server draining", "resources closed", "server stopped"]
    assert [event for event in events if event in expected] == expected
