"""The resources of a worker process's job runs, as Dramatiq middleware: opened on the
worker's event loop after it boots, closed before it shuts down.

``after_worker_boot`` opens the PostgreSQL pool, Redis, the channel to the Agent
service and the change feed on the event-loop thread of Dramatiq's AsyncIO middleware
(the thread every async actor runs on); a message that arrives before they are open
waits for them. ``before_worker_shutdown`` runs before Dramatiq stops its worker
threads: the executor stops taking attempts, gives the running ones
``AGENTMESH_WORKER_SHUTDOWN_GRACE_S`` to finish and hands back the rest, then the
resources close.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from typing import Any, Final, cast

import asyncpg  # type: ignore[import-untyped]
import dramatiq
import structlog
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.middleware import Middleware

from agentmesh.core.changes import ChangeFeed
from agentmesh.core.channels import open_channel
from agentmesh.core.db import create_pool
from agentmesh.core.redis import create_redis
from agentmesh.core.settings import Settings
from agentmesh.job.credentials import TenantTokens
from agentmesh.job.execution import JobExecutor
from agentmesh.job.settings import JobSettings, WorkerSettings
from agentmesh.job.stores.jobs import JOB_CHANGES
from agentmesh.v1 import agent_pb2, agent_pb2_grpc

_log = structlog.get_logger("agentmesh.worker")

READY_TIMEOUT_S: Final = 60.0
"""How long a message waits for the resources of a booting worker."""
RETRY_OPEN_S: Final = 1.0


class JobResources(Middleware):
    """Opens and closes what job runs need; hands actors the executor."""

    def __init__(self, settings: Settings, job: JobSettings, worker: WorkerSettings) -> None:
        self._settings = settings
        self._job = job
        self._worker = worker
        self._tokens = TenantTokens(settings, worker)  # a configuration error fails here
        self._executor: JobExecutor | None = None
        self._ready: asyncio.Event | None = None
        self._close: list[Any] = []
        self._opening: Any = None

    async def executor(self) -> JobExecutor:
        """The executor, once the resources are open (on the worker's event loop)."""
        if self._ready is None:
            self._ready = asyncio.Event()
        async with asyncio.timeout(READY_TIMEOUT_S):
            await self._ready.wait()
        assert self._executor is not None
        return self._executor

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        thread = get_event_loop_thread()
        assert thread is not None, "the AsyncIO middleware comes first"
        # In the background: a database that is down at boot is waited for, not fatal.
        self._opening = asyncio.run_coroutine_threadsafe(self._open_when_possible(), thread.loop)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        thread = get_event_loop_thread()
        if self._opening is not None:
            self._opening.cancel()
        if thread is not None:
            thread.run_coroutine(self._shutdown())

    async def _open_when_possible(self) -> None:
        while True:
            try:
                await self._open()
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                _log.warning("job runner cannot open its resources yet", error=repr(exc))
                await asyncio.sleep(RETRY_OPEN_S)

    async def _open(self) -> None:
        settings = self._settings
        pool = await create_pool(settings)
        client = create_redis(settings)
        channel = open_channel(
            settings.agent_addr or "",
            settings,
            idempotent_methods=(),  # runs are not idempotent: never retried blindly
        )
        changes = ChangeFeed(client, JOB_CHANGES)
        changes.start()
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._executor = JobExecutor(
            job=self._job,
            worker=self._worker,
            pool=pool,
            client=client,
            agents=cast(
                "agent_pb2_grpc.AgentServiceAsyncStub", agent_pb2_grpc.AgentServiceStub(channel)
            ),
            tokens=self._tokens,
            changes=changes,
            owner=owner,
        )
        self._close = [changes.stop, lambda: channel.close(None), pool.close, client.aclose]
        if self._ready is None:
            self._ready = asyncio.Event()
        self._ready.set()
        _log.info("job runner ready", owner=owner, agent=agent_pb2.DESCRIPTOR.package)

    async def _shutdown(self) -> None:
        if self._executor is not None:
            await self._executor.stop()
        for close in self._close:
            try:
                await close()
            except Exception as exc:  # closing what may already be gone
                _log.warning("closing a worker resource failed", error=repr(exc))
        _log.info("job runner stopped")
