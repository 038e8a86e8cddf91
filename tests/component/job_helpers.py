"""Helpers of the Job component tests: a Job service (and the Agent service it asks
about agents) in this process, on the session's backends, and its stub."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias, cast

import grpc

from agentmesh.agent.app import build_agent
from agentmesh.core.server import RunningServer, start_server
from agentmesh.core.settings import Settings
from agentmesh.job.app import build_job
from agentmesh.job.settings import JobSettings
from agentmesh.v1 import job_pb2_grpc
from component.conftest import SECRET, Backends

if TYPE_CHECKING:
    JobStub: TypeAlias = job_pb2_grpc.JobServiceAsyncStub
else:
    JobStub = job_pb2_grpc.JobServiceStub


def job_environ(backends: Backends, agent_port: int, **overrides: str) -> dict[str, str]:
    """The environment of a Job service (or worker) on the session's backends."""
    return {
        "AGENTMESH_GRPC_PORT": "0",
        "AGENTMESH_METRICS_PORT": "0",
        "AGENTMESH_AUTH_HS256_SECRET": SECRET,
        "AGENTMESH_DATABASE_URL": backends.job_url,
        "AGENTMESH_REDIS_URL": backends.redis_url,
        "AGENTMESH_AGENT_ADDR": f"127.0.0.1:{agent_port}",
        **overrides,
    }


@contextlib.asynccontextmanager
async def serve_agent(memory_port: int, redis_url: str) -> AsyncIterator[RunningServer]:
    """An Agent service (the built-in agents) using the Memory service at
    ``memory_port``."""
    settings = Settings.from_env(
        {
            "AGENTMESH_GRPC_PORT": "0",
            "AGENTMESH_METRICS_PORT": "0",
            "AGENTMESH_AUTH_HS256_SECRET": SECRET,
            "AGENTMESH_MEMORY_ADDR": f"127.0.0.1:{memory_port}",
            "AGENTMESH_REDIS_URL": redis_url,
        },
        service="agent",
    )
    running = await start_server(settings, await build_agent(settings))
    try:
        yield running
    finally:
        await running.stop(0)


@dataclass(frozen=True)
class JobServer:
    stub: JobStub
    running: RunningServer


@contextlib.asynccontextmanager
async def serve_job(
    backends: Backends, agent_port: int, **overrides: str
) -> AsyncIterator[JobServer]:
    """A Job service with ``overrides`` (``AGENTMESH_*`` variables) and a stub of it."""
    environ = job_environ(backends, agent_port, **overrides)
    settings = Settings.from_env(environ, service="job")
    running = await start_server(settings, await build_job(settings, JobSettings.from_env(environ)))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield JobServer(cast("JobStub", job_pb2_grpc.JobServiceStub(channel)), running)
    finally:
        await running.stop(0)
