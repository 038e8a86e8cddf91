"""The Memory janitor against the real PostgreSQL and Redis of the component tests.

Tests call the pass (``run_janitor_pass``) directly, with times moved in the database
to make rows due. The session's Memory servers run janitors of their own, on the
production lock: ``quiet_janitors`` holds that lock so they skip their passes, and the
tests' passes take a lock key of their own. Nothing here waits on a clock except the
loop tests, which wait (bounded) for something that happens, never for a duration.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest
import redis.asyncio
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from agentmesh.memory import janitor
from agentmesh.memory.app import build_memory
from agentmesh.memory.janitor import JanitorReport, run_janitor_pass
from agentmesh.v1 import common_pb2, memory_pb2

# `component.conftest`, not `conftest`: the name mypy resolves too (mypy_path has tests/).
from component.conftest import Backends, MemoryConfig, Metadata, credentials, memory_settings
from component.memory_helpers import Stub, expect_error, uid, unique

pytestmark = pytest.mark.component

NOT_FOUND = grpc.StatusCode.NOT_FOUND


@pytest.fixture
async def quiet_janitors(backends: Backends) -> AsyncIterator[None]:
    """Holds the production janitor lock for the test: the servers' own janitors skip
    their passes meanwhile (waiting here for one in progress to finish), so only the
    test's passes delete anything and their counts are exact."""
    conn = await asyncpg.connect(backends.database_url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", janitor.LOCK_KEY)
        yield
    finally:
        await conn.close()


@pytest.fixture
def lock_key() -> int:
    """A lock key of the test's own (not the production one ``quiet_janitors`` holds)."""
    return random.randrange(1, 2**62)


def settings_for(backends: Backends, **overrides: str) -> MemoryConfig:
    """Memory settings with ``overrides``; no janitor loop unless they ask for one."""
    return memory_settings(backends, **{"AGENTMESH_MEMORY_JANITOR_INTERVAL_S": "0", **overrides})


def fresh_tenant() -> tuple[str, Metadata]:
    tenant = f"jan-{uid()}"
    return tenant, credentials(tenant)


def later(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.now(UTC) + timedelta(seconds=seconds))
    return stamp


async def make_due(db: asyncpg.Pool, tenant: str, session_id: str) -> None:
    """Moves a deleted session's purge time into the past."""
    moved = await db.execute(
        "UPDATE memory.sessions SET delete_time = now() - interval '8 days',"
        " purge_time = now() - interval '1 second' WHERE tenant = $1 AND id = $2"
        " AND delete_time IS NOT NULL",
        tenant,
        session_id,
    )
    assert moved == "UPDATE 1"


async def count(db: asyncpg.Pool, sql: str, *args: Any) -> int:
    found: int = await db.fetchval(sql, *args)
    return found


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Waits until ``check`` holds (bounded, so a broken loop fails instead of hanging)."""
    for _ in range(2000):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def passes(outcome: str) -> float:
    value = REGISTRY.get_sample_value("agentmesh_memory_janitor_passes_total", {"outcome": outcome})
    return value or 0.0


def purged(kind: str) -> float:
    value = REGISTRY.get_sample_value("agentmesh_memory_janitor_purged_total", {"kind": kind})
    return value or 0.0


class Scene:
    """A tenant's rows, some due for the purge and some not, and another tenant's
    session that shares the id of the due one."""

    def __init__(self, memory: Stub, db: asyncpg.Pool) -> None:
        self.memory = memory
        self.db = db
        self.tenant, self.auth = fresh_tenant()
        self.other_tenant, self.other_auth = fresh_tenant()
        self.due = unique()
        self.in_window = unique()
        self.live = unique()

    async def session(self, auth: Metadata, session_id: str) -> None:
        """A session with two messages, working memory and checkpoints on two threads."""
        name = f"sessions/{session_id}"
        await self.memory.CreateSession(
            memory_pb2.CreateSessionRequest(
                session=memory_pb2.Session(), session_id=session_id, request_id=uid()
            ),
            metadata=auth,
        )
        await self.memory.AppendMessages(
            memory_pb2.AppendMessagesRequest(
                parent=name,
                messages=[
                    memory_pb2.Message(
                        role=common_pb2.ROLE_USER, parts=[common_pb2.Part(text=text)]
                    )
                    for text in ("one", "two")
                ],
            ),
            metadata=auth,
        )
        await self.memory.UpdateWorkingMemory(
            memory_pb2.UpdateWorkingMemoryRequest(
                working_memory=memory_pb2.WorkingMemory(
                    name=f"{name}/workingMemory", values={"k": struct_pb2.Value(number_value=1)}
                )
            ),
            metadata=auth,
        )
        for thread in (session_id, f"{session_id}:sub"):
            await self.memory.PutCheckpoint(
                memory_pb2.PutCheckpointRequest(
                    checkpoint=memory_pb2.Checkpoint(
                        thread_id=thread,
                        checkpoint_id="c1",
                        checkpoint=memory_pb2.TypedValue(type="json", data=b"{}"),
                    )
                ),
                metadata=auth,
            )
            await self.memory.PutCheckpointWrites(
                memory_pb2.PutCheckpointWritesRequest(
                    thread_id=thread,
                    checkpoint_id="c1",
                    writes=[
                        memory_pb2.PendingWrite(
                            task_id="t",
                            channel="c",
                            value=memory_pb2.TypedValue(type="json", data=b"1"),
                        )
                    ],
                ),
                metadata=auth,
            )

    async def build(self) -> None:
        for session_id in (self.due, self.in_window, self.live):
            await self.session(self.auth, session_id)
        # The other tenant's live session has the same id as the due one.
        await self.session(self.other_auth, self.due)
        for session_id in (self.due, self.in_window):
            await self.memory.DeleteSession(
                memory_pb2.DeleteSessionRequest(name=f"sessions/{session_id}"),
                metadata=self.auth,
            )
        await make_due(self.db, self.tenant, self.due)

    async def stored(self, tenant: str, session_id: str) -> tuple[int, int, int, int]:
        """(session rows, messages, checkpoints, checkpoint writes) of a session."""
        threads = [session_id, f"{session_id}:sub"]
        return (
            await count(
                self.db,
                "SELECT count(*) FROM memory.sessions WHERE tenant = $1 AND id = $2",
                tenant,
                session_id,
            ),
            await count(
                self.db,
                "SELECT count(*) FROM memory.messages WHERE tenant = $1 AND session_id = $2",
                tenant,
                session_id,
            ),
            await count(
                self.db,
                "SELECT count(*) FROM memory.checkpoints"
                " WHERE tenant = $1 AND thread_id = ANY($2::text[])",
                tenant,
                threads,
            ),
            await count(
                self.db,
                "SELECT count(*) FROM memory.checkpoint_writes"
                " WHERE tenant = $1 AND thread_id = ANY($2::text[])",
                tenant,
                threads,
            ),
        )


async def create_memory(memory: Stub, auth: Metadata, content: str, expire_s: float | None) -> str:
    request = memory_pb2.CreateMemoryRequest(
        memory=memory_pb2.Memory(namespace=f"jan/{uid()}", content=content)
    )
    if expire_s is not None:
        request.memory.expire_time.CopyFrom(later(expire_s))
    created = await memory.CreateMemory(request, metadata=auth)
    return created.name.removeprefix("memories/")


async def put_item(memory: Stub, auth: Metadata, key: str) -> None:
    await memory.PutStoreItem(
        memory_pb2.PutStoreItemRequest(
            item=memory_pb2.StoreItem(namespace=["jan"], key=key, value_json=json.dumps({})),
            index_fields=["$none"],
            ttl=duration_pb2.Duration(seconds=3600),
        ),
        metadata=auth,
    )


# ------------------------------------------------------------------ one pass


async def test_a_pass_purges_what_is_due_and_nothing_else(
    memory: Stub,
    db: asyncpg.Pool,
    redis_client: redis.asyncio.Redis,
    backends: Backends,
    quiet_janitors: None,
    lock_key: int,
) -> None:
    # Batches of 2: every kind below takes more than one batch.
    settings = settings_for(backends, AGENTMESH_MEMORY_JANITOR_BATCH_SIZE="2")
    # Whatever earlier tests left due goes first, so the counts below are this test's.
    await run_janitor_pass(*settings, redis_client, lock_key=lock_key)

    scene = Scene(memory, db)
    await scene.build()
    tenant = scene.tenant
    expired = [await create_memory(memory, scene.auth, f"old {i}", 3600) for i in range(3)]
    kept_memories = [
        await create_memory(memory, scene.auth, "later", 3600),
        await create_memory(memory, scene.auth, "forever", None),
    ]
    await db.execute(
        "UPDATE memory.memories SET expire_time = now() - interval '1 second'"
        " WHERE tenant = $1 AND id = ANY($2::text[])",
        tenant,
        expired,
    )
    # Request ids: the tenant's three CreateSession calls claimed one each; expire two.
    await db.execute(
        "UPDATE memory.request_ids SET expire_time = now() - interval '1 second'"
        " WHERE tenant = $1 AND request_id IN"
        " (SELECT request_id FROM memory.request_ids WHERE tenant = $1 LIMIT 2)",
        tenant,
    )
    for key in ("a", "b", "c", "kept"):
        await put_item(memory, scene.auth, key)
    await db.execute(
        "UPDATE memory.store_items SET expire_time = now() - interval '1 second'"
        " WHERE tenant = $1 AND key <> 'kept'",
        tenant,
    )
    before = {kind: purged(kind) for kind in janitor.KINDS}

    report = await run_janitor_pass(*settings, redis_client, lock_key=lock_key)

    assert report == JanitorReport(ran=True, memories=3, request_ids=2, store_items=3, sessions=1)
    assert {kind: purged(kind) - before[kind] for kind in janitor.KINDS} == {
        "memories": 3,
        "request_ids": 2,
        "store_items": 3,
        "sessions": 1,
    }
    # Gone: the due session with everything it held.
    assert await scene.stored(tenant, scene.due) == (0, 0, 0, 0)
    assert await redis_client.exists(f"agentmesh:wm:{tenant}:{scene.due}") == 0
    # Kept: the session still in its purge window, the live one, the other tenant's
    # session of the same id, and what has not expired.
    for tenant_id, session_id in (
        (tenant, scene.in_window),
        (tenant, scene.live),
        (scene.other_tenant, scene.due),
    ):
        assert await scene.stored(tenant_id, session_id) == (1, 2, 2, 2), session_id
        assert await redis_client.exists(f"agentmesh:wm:{tenant_id}:{session_id}") == 1
    memories_left = await db.fetch(
        "SELECT id FROM memory.memories WHERE tenant = $1 ORDER BY id", tenant
    )
    assert [row["id"] for row in memories_left] == sorted(kept_memories)
    assert await count(db, "SELECT count(*) FROM memory.request_ids WHERE tenant = $1", tenant) == 1
    items = await db.fetch("SELECT key FROM memory.store_items WHERE tenant = $1", tenant)
    assert [row["key"] for row in items] == ["kept"]

    # The purged session's id is free again; undelete cannot bring it back.
    name = f"sessions/{scene.due}"
    await expect_error(
        memory.UndeleteSession(memory_pb2.UndeleteSessionRequest(name=name), metadata=scene.auth),
        NOT_FOUND,
    )
    fresh = await memory.CreateSession(
        memory_pb2.CreateSessionRequest(session=memory_pb2.Session(), session_id=scene.due),
        metadata=scene.auth,
    )
    assert fresh.message_count == 0
    # The session in its window can still be undeleted, whole.
    restored = await memory.UndeleteSession(
        memory_pb2.UndeleteSessionRequest(name=f"sessions/{scene.in_window}"), metadata=scene.auth
    )
    assert restored.message_count == 2

    # Nothing is due any more: the next pass deletes nothing.
    assert await run_janitor_pass(*settings, redis_client, lock_key=lock_key) == JanitorReport(
        ran=True
    )


async def test_a_pass_while_another_holds_the_lock_does_nothing(
    memory: Stub,
    db: asyncpg.Pool,
    redis_client: redis.asyncio.Redis,
    backends: Backends,
    quiet_janitors: None,
    lock_key: int,
) -> None:
    settings = settings_for(backends)
    tenant, auth = fresh_tenant()
    session_id = unique()
    await memory.CreateSession(
        memory_pb2.CreateSessionRequest(session=memory_pb2.Session(), session_id=session_id),
        metadata=auth,
    )
    await memory.DeleteSession(
        memory_pb2.DeleteSessionRequest(name=f"sessions/{session_id}"), metadata=auth
    )
    await make_due(db, tenant, session_id)
    rows = "SELECT count(*) FROM memory.sessions WHERE tenant = $1 AND id = $2"

    other_replica = await asyncpg.connect(backends.database_url)
    try:
        assert await other_replica.fetchval("SELECT pg_try_advisory_lock($1)", lock_key)
        skipped = passes("skipped")
        report = await janitor.janitor_pass(*settings, redis_client, lock_key=lock_key)
        assert report == JanitorReport(ran=False)
        assert passes("skipped") == skipped + 1
        assert await count(db, rows, tenant, session_id) == 1
    finally:
        await other_replica.close()  # the other replica's pass ends

    report = await run_janitor_pass(*settings, redis_client, lock_key=lock_key)
    assert report.ran
    assert report.sessions == 1
    assert await count(db, rows, tenant, session_id) == 0
    # The pass released the lock: another session can take it at once.
    probe = await asyncpg.connect(backends.database_url)
    try:
        assert await probe.fetchval("SELECT pg_try_advisory_lock($1)", lock_key)
    finally:
        await probe.close()


# ------------------------------------------------------------------ the loop


def unreachable_database(backends: Backends, **overrides: str) -> MemoryConfig:
    """Settings whose database refuses connections (a port nothing listens on)."""
    return settings_for(
        backends,
        AGENTMESH_DATABASE_URL="postgresql://postgres@127.0.0.1:9/agentmesh",
        **overrides,
    )


async def test_a_failed_pass_is_logged_and_counted_and_raises_nothing(
    backends: Backends, redis_client: redis.asyncio.Redis
) -> None:
    failed = passes("failed")
    with capture_logs() as logs:
        report = await janitor.janitor_pass(*unreachable_database(backends), redis_client)
    assert report is None
    assert passes("failed") == failed + 1
    lines = [line for line in logs if line["event"] == "janitor pass failed"]
    assert len(lines) == 1, logs
    assert lines[0]["log_level"] == "warning"  # an outage, not a bug: no stack trace
    assert "error" in lines[0]


async def test_the_loop_survives_failures_and_stops_when_cancelled(
    backends: Backends, redis_client: redis.asyncio.Redis
) -> None:
    settings = unreachable_database(backends, AGENTMESH_MEMORY_JANITOR_INTERVAL_S="0.01")
    failed = passes("failed")
    task = janitor.start_janitor(*settings, redis_client)
    assert task is not None
    try:

        async def failed_twice() -> bool:
            return passes("failed") >= failed + 2

        await eventually(failed_twice, "two failed passes")
        assert not task.done()  # a failure is retried next interval, never fatal
    finally:
        await janitor.stop_janitor(task)
    assert task.cancelled()


async def test_the_memory_service_runs_the_janitor_until_it_stops(
    backends: Backends, db: asyncpg.Pool
) -> None:
    def janitors() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if t.get_name() == "memory-janitor"]

    already = set(janitors())  # the session's own server runs one
    disabled = await build_memory(*settings_for(backends))
    try:
        assert set(janitors()) == already  # interval 0: no janitor
    finally:
        for hook in disabled.on_stop:
            await hook()

    tenant = f"jan-{uid()}"
    await db.execute(
        "INSERT INTO memory.request_ids (tenant, method, request_id, expire_time)"
        " VALUES ($1, 'CreateSession', 'r1', now() - interval '1 second')",
        tenant,
    )
    spec = await build_memory(
        *memory_settings(backends, AGENTMESH_MEMORY_JANITOR_INTERVAL_S="0.01")
    )
    try:
        (ours,) = set(janitors()) - already

        async def purged_row() -> bool:
            left = "SELECT count(*) FROM memory.request_ids WHERE tenant = $1"
            return await count(db, left, tenant) == 0

        await eventually(purged_row, "the expired request id purged")
    finally:
        for hook in spec.on_stop:
            await hook()
    assert ours.done()
    assert ours not in janitors()
