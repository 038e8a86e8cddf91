"""The Memory service's shared machinery against its real database: request_id claims
(``core.idempotency``) on ``memory.request_ids``, and the hash embedder."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest

from agentmesh.core.idempotency import RequestIds
from agentmesh.memory.embedders import HashEmbedder
from agentmesh.v1 import memory_pb2, memory_pb2_grpc

REQUEST_IDS = RequestIds("memory.request_ids", ttl_s=60)


async def test_concurrent_claims_of_one_request_id_run_the_work_once(db: asyncpg.Pool) -> None:
    """Two transactions race on one key: the second waits, then replays the first's
    response; a rolled-back claim leaves no key behind."""
    response = memory_pb2.Session(name="sessions/first")

    async def attempt(delay_s: float) -> memory_pb2.Session | None:
        async with db.acquire() as conn, conn.transaction():
            replay = await REQUEST_IDS.claim(conn, "t", "Test", "req-1", memory_pb2.Session)
            if replay is not None:
                return replay
            await asyncio.sleep(delay_s)
            await REQUEST_IDS.remember(conn, "t", "Test", "req-1", response)
            return None

    await db.execute("DELETE FROM memory.request_ids WHERE tenant = 't'")
    first, second = await asyncio.gather(attempt(0.3), attempt(0.0))
    results = [first, second]
    assert results.count(None) == 1  # exactly one did the work
    assert response in results  # the other replayed its response

    class WorkFailedError(Exception):
        pass

    async def failing_attempt() -> None:
        async with db.acquire() as conn, conn.transaction():
            await REQUEST_IDS.claim(conn, "t", "Test", "req-2", memory_pb2.Session)
            raise WorkFailedError

    with pytest.raises(WorkFailedError):
        await failing_attempt()
    left = await db.fetchval(
        "SELECT count(*) FROM memory.request_ids WHERE tenant = 't' AND request_id = 'req-2'"
    )
    assert left == 0


async def test_hash_embedder_is_deterministic_normalised_and_similarity_aware() -> None:
    embedder = HashEmbedder(384)
    a, b, c, empty = await embedder.embed(
        [
            "I prefer aisle seats on long flights",
            "prefers aisle seats on flights",
            "quarterly revenue grew by ten percent",
            "!!!",
        ]
    )
    assert a == (await embedder.embed(["I prefer aisle seats on long flights"]))[0]
    assert all(len(v) == 384 for v in (a, b, c, empty))
    assert abs(sum(x * x for x in a) - 1.0) < 1e-9
    similar = sum(x * y for x, y in zip(a, b, strict=True))
    unrelated = sum(x * y for x, y in zip(a, c, strict=True))
    assert similar > 0.5 > unrelated


async def test_a_request_id_is_scoped_to_its_tenant(
    memory: memory_pb2_grpc.MemoryServiceAsyncStub,
    tenant_a: tuple[tuple[str, str], ...],
    tenant_b: tuple[tuple[str, str], ...],
) -> None:
    """The same key from another tenant neither replays the first tenant's response nor
    waits on it: it does its own work."""
    request_id = f"shared-{uuid.uuid4().hex}"
    request = memory_pb2.CreateSessionRequest(
        session=memory_pb2.Session(display_name="per-tenant key"), request_id=request_id
    )
    mine = await memory.CreateSession(request, metadata=tenant_a)
    theirs = await memory.CreateSession(request, metadata=tenant_b, timeout=5)
    assert theirs.name != mine.name
    # Each tenant's retry replays its own response.
    assert await memory.CreateSession(request, metadata=tenant_a) == mine
    assert await memory.CreateSession(request, metadata=tenant_b) == theirs
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await memory.GetSession(memory_pb2.GetSessionRequest(name=theirs.name), metadata=tenant_a)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_expired_request_id_can_be_used_again_for_new_work(
    memory: memory_pb2_grpc.MemoryServiceAsyncStub,
    tenant_a: tuple[tuple[str, str], ...],
    db: asyncpg.Pool,
) -> None:
    request_id = f"reused-{uuid.uuid4().hex}"
    # Display names of this test's own: other tests count sessions by display name.
    again = f"again-{uuid.uuid4().hex[:8]}"
    first = await memory.CreateSession(
        memory_pb2.CreateSessionRequest(
            session=memory_pb2.Session(display_name="expiring key"), request_id=request_id
        ),
        metadata=tenant_a,
    )
    await db.execute(
        "UPDATE memory.request_ids SET expire_time = now() - interval '1 second'"
        " WHERE tenant = 'tenant-a' AND request_id = $1",
        request_id,
    )
    # Another request with the expired key is new work, not INVALID_ARGUMENT.
    second = await memory.CreateSession(
        memory_pb2.CreateSessionRequest(
            session=memory_pb2.Session(display_name=again), request_id=request_id
        ),
        metadata=tenant_a,
    )
    assert second.name != first.name
    assert second.display_name == again
