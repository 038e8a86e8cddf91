"""Helpers of the Job component tests: a Job service (and the Agent service it asks
about agents) in this process, on the session's backends, and its stub."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, cast

import grpc

from agentmesh.agent.app import build_agent
from agentmesh.core.server import RunningServer, start_server
from agentmesh.core.settings import Settings
from agentmesh.devstack._proc import ChildProcess
from agentmesh.devstack.env import child_env
from agentmesh.job.app import build_job
from agentmesh.job.settings import JobSettings
from agentmesh.v1 import job_pb2, job_pb2_grpc
from component.conftest import SECRET, Backends, Metadata
from component.memory_helpers import eventually

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


@contextlib.asynccontextmanager
async def worker_process(
    backends: Backends, agent_port: int, work: Path, name: str, **environ: str
) -> AsyncIterator[ChildProcess]:
    """A real ``python -m agentmesh.job.worker`` (Dramatiq's supervisor and its worker
    process, logs in ``work/<name>.log``), running jobs against the Agent service at
    ``agent_port``, once it says it is ready. Stopped on exit (SIGTERM, then SIGKILL
    of its process group) unless the test stopped it already."""
    env = child_env(
        os.environ,
        {
            "AGENTMESH_ENV": "dev",
            "AGENTMESH_METRICS_PORT": "0",
            "AGENTMESH_WORKER_THREADS": "4",
            **job_environ(backends, agent_port),
            **environ,
        },
        drop_otlp=True,
    )
    env.pop("AGENTMESH_GRPC_PORT", None)
    child = ChildProcess(
        name, [sys.executable, "-m", "agentmesh.job.worker"], log_path=work / f"{name}.log", env=env
    )
    try:

        async def ready() -> bool:
            if child.returncode() is not None:
                raise AssertionError(f"{name} exited {child.returncode()}:\n{child.log_tail()}")
            return "job runner ready" in child.log_path.read_text(errors="replace")

        await eventually(ready, f"{name} ready", timeout_s=60.0)
        yield child
    finally:
        await asyncio.to_thread(child.stop, 15.0)


def kill_group(child: ChildProcess) -> None:
    """SIGKILL the child's whole process group (a worker and its supervisor): a crash."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)


async def watch_until_end(
    stub: JobStub, name: str, metadata: Metadata, *, timeout_s: float = 60.0
) -> list[job_pb2.JobEvent]:
    """Every event of a watch of the job, until it ends (bounded by ``timeout_s``)."""
    async with asyncio.timeout(timeout_s):
        return [
            event
            async for event in stub.WatchJob(job_pb2.WatchJobRequest(name=name), metadata=metadata)
        ]


async def wait_state(
    stub: JobStub, name: str, metadata: Metadata, *states: int, timeout_s: float = 60.0
) -> job_pb2.Job:
    """The job once it is in one of ``states`` (polled; bounded by ``timeout_s``)."""
    found: list[job_pb2.Job] = []

    async def reached() -> bool:
        job = await stub.GetJob(job_pb2.GetJobRequest(name=name), metadata=metadata)
        found[:] = [job]
        return job.state in states

    await eventually(reached, f"{name} in {states}", timeout_s=timeout_s)
    return found[0]
