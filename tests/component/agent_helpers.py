"""Helpers shared by the Agent component tests: Agent servers in this process and in
their own OS processes, the test agents' package, and draining a stream.

Import them as ``component.agent_helpers`` (mypy_path has tests/).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import grpc

from agentmesh.agent.app import SERVICE_NAME, build_agent
from agentmesh.agent.definition import AgentDefinition
from agentmesh.agent.settings import AgentSettings
from agentmesh.core.server import RunningServer, start_server
from agentmesh.core.settings import Settings
from agentmesh.devstack._proc import ChildProcess
from agentmesh.devstack.env import child_env
from agentmesh.devstack.stack import check_health
from agentmesh.v1 import agent_pb2, agent_pb2_grpc
from component.conftest import SECRET
from component.memory_helpers import eventually, free_port

if TYPE_CHECKING:
    AgentStub: TypeAlias = agent_pb2_grpc.AgentServiceAsyncStub
else:
    AgentStub = agent_pb2_grpc.AgentServiceStub

FIXTURES = Path(__file__).resolve().parent.parent / "agent_fixtures"
"""A separate package of test agents with its dist-info (its entry points are found
once this folder is on ``sys.path`` or ``PYTHONPATH``)."""


def agent_settings(memory_port: int | None = None) -> Settings:
    """Settings of an in-process Agent server on a free port (with Memory when given)."""
    environ = {
        "AGENTMESH_GRPC_PORT": "0",
        "AGENTMESH_METRICS_PORT": "0",
        "AGENTMESH_AUTH_HS256_SECRET": SECRET,
    }
    if memory_port is not None:
        environ["AGENTMESH_MEMORY_ADDR"] = f"127.0.0.1:{memory_port}"
    return Settings.from_env(environ, service="agent")


@asynccontextmanager
async def served_agent(
    agent: AgentSettings,
    memory_port: int | None = None,
    *,
    definitions: Sequence[AgentDefinition] | None = None,
) -> AsyncIterator[AgentStub]:
    """An Agent server in this process, built by ``build_agent`` (with only
    ``definitions`` when given), and a stub of it."""
    settings = agent_settings(memory_port)
    spec = await build_agent(settings, agent, definitions=definitions)
    running: RunningServer = await start_server(settings, spec)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield cast("AgentStub", agent_pb2_grpc.AgentServiceStub(channel))
    finally:
        await running.stop(0)


@asynccontextmanager
async def agent_process(
    memory_port: int, work: Path, name: str, *, port: int | None = None, **environ: str
) -> AsyncIterator[tuple[ChildProcess, AgentStub]]:
    """A real ``python -m agentmesh.agent`` process (logs in ``work/<name>.log``) that
    finds the test agents' package, once it is SERVING, and a stub of it; ``environ``
    adds ``AGENTMESH_*`` variables. Stopped on exit (SIGTERM, then SIGKILL) unless the
    test stopped it already. ``port``: where it listens (default: a free one)."""
    port = port or free_port()
    address = f"127.0.0.1:{port}"
    env = child_env(
        os.environ,
        {
            "AGENTMESH_ENV": "dev",
            "AGENTMESH_GRPC_HOST": "127.0.0.1",
            "AGENTMESH_GRPC_PORT": str(port),
            "AGENTMESH_METRICS_PORT": "0",
            "AGENTMESH_AUTH_HS256_SECRET": SECRET,
            "AGENTMESH_MEMORY_ADDR": f"127.0.0.1:{memory_port}",
            "PYTHONPATH": os.pathsep.join([str(FIXTURES), os.environ.get("PYTHONPATH", "")]),
            **environ,
        },
        drop_otlp=True,
    )
    child = ChildProcess(
        name, [sys.executable, "-m", "agentmesh.agent"], log_path=work / f"{name}.log", env=env
    )
    try:

        async def serving() -> bool:
            if child.returncode() is not None:
                raise AssertionError(f"{name} exited {child.returncode()}:\n{child.log_tail()}")
            status = await asyncio.to_thread(check_health, address, SERVICE_NAME, timeout_s=0.5)
            return status == "SERVING"

        await eventually(serving, f"{name} SERVING", timeout_s=60.0)
        async with grpc.aio.insecure_channel(address) as channel:
            yield child, cast("AgentStub", agent_pb2_grpc.AgentServiceStub(channel))
    finally:
        await asyncio.to_thread(child.stop, 10.0)


async def drain(call: Any) -> list[agent_pb2.AgentEvent]:
    """Every event of a server stream (StreamAgent, ResumeAgent)."""
    return [event async for event in call]
