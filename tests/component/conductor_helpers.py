"""Helpers of the Conductor component tests: a Conductor service in this process, on
the session's backends, wired to real Memory and Agent services, and its stub."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import grpc

from agentmesh.conductor.app import build_conductor
from agentmesh.conductor.settings import ConductorSettings
from agentmesh.core.server import start_server
from agentmesh.core.settings import Settings
from agentmesh.v1 import common_pb2, conductor_pb2, conductor_pb2_grpc
from component.conftest import SECRET, Backends, Metadata

if TYPE_CHECKING:
    ConductorStub: TypeAlias = conductor_pb2_grpc.ConductorServiceAsyncStub
else:
    ConductorStub = conductor_pb2_grpc.ConductorServiceStub


@contextlib.asynccontextmanager
async def serve_conductor(
    backends: Backends, memory_port: int, agent_port: int, **overrides: str
) -> AsyncIterator[ConductorStub]:
    """A Conductor service with ``overrides`` (``AGENTMESH_*`` variables) and a stub."""
    environ = {
        "AGENTMESH_GRPC_PORT": "0",
        "AGENTMESH_METRICS_PORT": "0",
        "AGENTMESH_AUTH_HS256_SECRET": SECRET,
        "AGENTMESH_DATABASE_URL": backends.conductor_url,
        "AGENTMESH_REDIS_URL": backends.redis_url,
        "AGENTMESH_MEMORY_ADDR": f"127.0.0.1:{memory_port}",
        "AGENTMESH_AGENT_ADDR": f"127.0.0.1:{agent_port}",
        **overrides,
    }
    settings = Settings.from_env(environ, service="conductor")
    spec = await build_conductor(settings, ConductorSettings.from_env(environ))
    running = await start_server(settings, spec)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield cast("ConductorStub", conductor_pb2_grpc.ConductorServiceStub(channel))
    finally:
        await running.stop(0)


def text(value: str) -> list[common_pb2.Part]:
    return [common_pb2.Part(text=value)]


async def converse(
    stub: ConductorStub, metadata: Metadata, timeout_s: float = 60.0, **fields: Any
) -> list[conductor_pb2.ConverseEvent]:
    """Every event of one Converse call (bounded by ``timeout_s``)."""
    async with asyncio.timeout(timeout_s):
        call = stub.Converse(conductor_pb2.ConverseRequest(**fields), metadata=metadata)
        return [event async for event in call]


def kinds(events: list[conductor_pb2.ConverseEvent]) -> list[str]:
    """Each event's kind; relayed agent events as ``agent:<kind>``."""
    found: list[str] = []
    for event in events:
        kind: str = event.WhichOneof("event") or ""
        if kind == "agent_event":
            kind = "agent:" + (event.agent_event.WhichOneof("event") or "")
        found.append(kind)
    return found
