"""The real Memory process drains on SIGTERM: a call in flight finishes, new calls do not
start, and the process exits 0 within ``AGENTMESH_DRAIN_GRACE_S``.

``python -m agentmesh.memory`` runs as a child process (the entry point production runs).
The call in flight is an AppendMessages held on the session's row lock, which this test
takes through its own PostgreSQL connection and releases only after SIGTERM has been sent
and the drain has been observed: deterministic, no sleeping race. Every wait is bounded;
nothing is timed.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentmesh.devstack._proc import ChildProcess, port_is_listening
from agentmesh.devstack.env import child_env
from agentmesh.devstack.stack import check_health
from agentmesh.memory.app import SERVICE_NAME
from agentmesh.v1 import common_pb2, memory_pb2, memory_pb2_grpc
from component.conftest import SECRET, Backends, credentials
from component.memory_helpers import eventually, free_port

DRAIN_GRACE_S = 30.0
"""Long enough that the in-flight call, released by the test, finishes well inside it:
the exit is then the drain finishing, not the grace period running out."""
WAIT_S = 20.0
TENANT = "drain-tenant"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class Process:
    child: ChildProcess
    address: str
    database_url: str


@pytest.fixture
async def memory_process(backends: Backends) -> AsyncIterator[Process]:
    """``python -m agentmesh.memory`` on a free port, SERVING; stopped by PID at the end."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = child_env(
        os.environ,
        {
            "AGENTMESH_ENV": "dev",
            "AGENTMESH_GRPC_HOST": "127.0.0.1",
            "AGENTMESH_GRPC_PORT": str(port),
            "AGENTMESH_METRICS_PORT": "0",
            "AGENTMESH_DATABASE_URL": backends.database_url,
            "AGENTMESH_REDIS_URL": backends.redis_url,
            "AGENTMESH_AUTH_HS256_SECRET": SECRET,
            "AGENTMESH_MEMORY_EMBEDDER": "hash",
            "AGENTMESH_DRAIN_GRACE_S": str(DRAIN_GRACE_S),
        },
        drop_otlp=True,
    )
    log_dir = Path(tempfile.mkdtemp(prefix="agentmesh-drain-"))
    child = ChildProcess(
        "memory",
        [sys.executable, "-m", "agentmesh.memory"],
        log_path=log_dir / "memory.log",
        env=env,
    )
    try:

        async def serving() -> bool:
            if child.returncode() is not None:
                raise AssertionError(f"memory exited {child.returncode()}:\n{child.log_tail()}")
            status = await asyncio.to_thread(check_health, address, SERVICE_NAME, timeout_s=0.5)
            return status == "SERVING"

        await eventually(serving, "memory SERVING", timeout_s=60.0)
        yield Process(child, address, backends.database_url)
    finally:
        await asyncio.to_thread(child.stop, DRAIN_GRACE_S + 5)


async def blocked_on(conn: asyncpg.Connection) -> int:
    """How many connections wait on a lock that ``conn`` holds."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
        await conn.fetchval("SELECT pg_backend_pid()"),
    )
    return count


async def new_call(address: str, metadata: Any, name: str) -> grpc.StatusCode:
    """The code of a new call on a new connection."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = cast("Any", memory_pb2_grpc.MemoryServiceStub(channel))
        try:
            await stub.GetSession(
                memory_pb2.GetSessionRequest(name=name), metadata=metadata, timeout=5.0
            )
        except grpc.aio.AioRpcError as exc:
            code: grpc.StatusCode = exc.code()
            return code
    return grpc.StatusCode.OK


async def test_sigterm_finishes_the_call_in_flight_refuses_new_ones_and_exits_0(
    memory_process: Process,
) -> None:
    child, address = memory_process.child, memory_process.address
    metadata = credentials(TENANT)
    locker = await asyncpg.connect(memory_process.database_url)
    channel = grpc.aio.insecure_channel(address)
    try:
        stub = cast("Any", memory_pb2_grpc.MemoryServiceStub(channel))
        health = health_pb2_grpc.HealthStub(channel)
        session = await stub.CreateSession(
            memory_pb2.CreateSessionRequest(session=memory_pb2.Session(display_name="drain")),
            metadata=metadata,
            timeout=WAIT_S,
        )
        session_id = session.name.removeprefix("sessions/")

        # The call in flight: AppendMessages waits on the session's row lock, held here.
        lock = locker.transaction()
        await lock.start()
        await locker.execute(
            "SELECT 1 FROM memory.sessions WHERE tenant = $1 AND id = $2 FOR UPDATE",
            TENANT,
            session_id,
        )
        message = memory_pb2.Message(
            role=common_pb2.ROLE_USER, parts=[common_pb2.Part(text="in flight at SIGTERM")]
        )
        in_flight = asyncio.ensure_future(
            stub.AppendMessages(
                memory_pb2.AppendMessagesRequest(parent=session.name, messages=[message]),
                metadata=metadata,
                timeout=DRAIN_GRACE_S * 2,
            )
        )

        async def waiting() -> bool:
            return await blocked_on(locker) > 0

        await eventually(waiting, "AppendMessages on the lock", WAIT_S)

        # Health as a load balancer sees it: a Watch opened before the signal.
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        first = await asyncio.wait_for(watch.read(), WAIT_S)
        assert first.status == SERVING

        child.terminate()  # SIGTERM, once, to the PID

        changed = await asyncio.wait_for(watch.read(), WAIT_S)
        assert changed.status == NOT_SERVING
        watch.cancel()  # an open Watch is itself a call the drain would wait for
        codes: list[grpc.StatusCode] = []

        async def new_calls_fail() -> bool:
            # OK until the server has acted on the signal (between the health change and
            # the listener closing), then refused for good.
            codes.append(await new_call(address, metadata, session.name))
            return codes[-1] != grpc.StatusCode.OK

        await eventually(new_calls_fail, "new calls to be refused", WAIT_S)
        assert codes[-1] == grpc.StatusCode.UNAVAILABLE, codes
        assert not port_is_listening(int(address.rpartition(":")[2]))
        # Still draining: the process waits for the call, which waits for the lock.
        assert child.returncode() is None
        assert not in_flight.done()

        await lock.rollback()
        appended = await asyncio.wait_for(in_flight, WAIT_S)
        assert [m.sequence for m in appended.messages] == [1]

        async def exited() -> bool:
            return child.returncode() is not None

        await eventually(exited, "the process to exit after its drain", DRAIN_GRACE_S)
        assert child.returncode() == 0, child.log_tail()
        stored = await locker.fetchval(
            "SELECT count(*) FROM memory.messages WHERE tenant = $1 AND session_id = $2",
            TENANT,
            session_id,
        )
        assert stored == 1
        assert '"server stopped"' in child.log_tail(), child.log_tail()
    finally:
        await channel.close(None)
        await locker.close()
