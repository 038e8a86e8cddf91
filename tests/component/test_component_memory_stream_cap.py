"""AGENTMESH_MAX_CONCURRENT_STREAMS caps the calls one client connection has in flight:
past it, the connection's next call waits for a free stream (HTTP/2 flow), while
another connection is served at once."""

from __future__ import annotations

import asyncio
from typing import cast

import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest

from agentmesh.core.server import start_server
from agentmesh.memory.app import build_memory
from agentmesh.v1 import common_pb2, memory_pb2, memory_pb2_grpc
from component.conftest import Backends, Metadata, memory_settings
from component.memory_helpers import Stub


async def _blocked_on(db: asyncpg.Pool, pid: int) -> int:
    """How many backends wait on a lock held by ``pid``."""
    count: int = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", pid
    )
    return count


async def test_a_connection_past_its_stream_cap_waits_and_another_is_served(
    backends: Backends, db: asyncpg.Pool, tenant_a: Metadata
) -> None:
    config = memory_settings(
        backends,
        AGENTMESH_MAX_CONCURRENT_STREAMS="1",
        AGENTMESH_MEMORY_JANITOR_INTERVAL_S="0",
    )
    running = await start_server(config.settings, await build_memory(*config))
    address = f"127.0.0.1:{running.port}"
    try:
        async with (
            grpc.aio.insecure_channel(address) as first,
            # Its own subchannel pool: channels with the same target otherwise share one
            # HTTP/2 connection.
            grpc.aio.insecure_channel(
                address, options=[("grpc.use_local_subchannel_pool", 1)]
            ) as second,
        ):
            stub = cast("Stub", memory_pb2_grpc.MemoryServiceStub(first))
            other = cast("Stub", memory_pb2_grpc.MemoryServiceStub(second))
            session = await stub.CreateSession(
                memory_pb2.CreateSessionRequest(session=memory_pb2.Session()), metadata=tenant_a
            )
            append = memory_pb2.AppendMessagesRequest(
                parent=session.name,
                messages=[
                    memory_pb2.Message(
                        role=common_pb2.ROLE_USER, parts=[common_pb2.Part(text="held")]
                    )
                ],
            )
            async with db.acquire() as conn, conn.transaction():
                # The session row locked: an append of it waits inside the server.
                await conn.execute(
                    "SELECT 1 FROM memory.sessions WHERE id = $1 FOR UPDATE",
                    session.name.split("/")[1],
                )
                held = asyncio.ensure_future(
                    stub.AppendMessages(append, metadata=tenant_a, timeout=30)
                )
                pid = await conn.fetchval("SELECT pg_backend_pid()")
                for _ in range(300):  # bounded: at most ~30 s
                    if await _blocked_on(db, pid):
                        break
                    await asyncio.sleep(0.1)
                else:
                    pytest.fail("the held append never reached the lock")
                # Same connection: no stream is free, so the call never starts.
                with pytest.raises(grpc.aio.AioRpcError) as waited:
                    await stub.GetSession(
                        memory_pb2.GetSessionRequest(name=session.name),
                        metadata=tenant_a,
                        timeout=1.0,
                    )
                assert waited.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
                # Another connection has streams of its own.
                got = await other.GetSession(
                    memory_pb2.GetSessionRequest(name=session.name), metadata=tenant_a, timeout=10
                )
                assert got.name == session.name
            appended = await held
            assert appended.messages[0].sequence == 1
            # The stream is free again: the first connection is served.
            await stub.GetSession(
                memory_pb2.GetSessionRequest(name=session.name), metadata=tenant_a, timeout=10
            )
    finally:
        await running.stop(0)
