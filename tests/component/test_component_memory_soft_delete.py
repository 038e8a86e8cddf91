"""Soft delete of sessions (AIP-164) over real gRPC, PostgreSQL and Redis.

DeleteSession keeps a session and what it holds until its purge time; meanwhile the
session is NOT_FOUND for every RPC that names it or one of its threads, its id stays
taken, ListSessions shows it only with ``show_deleted``, and UndeleteSession gives it
back whole. The purge itself is the janitor's (test_component_memory_janitor.py).
The component server has the default purge window (7 days).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any, cast

import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest
import redis.asyncio
from google.protobuf import field_mask_pb2, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agentmesh.v1 import common_pb2, memory_pb2

# `component.conftest`, not `conftest`: the name mypy resolves too (mypy_path has tests/).
from component.conftest import Metadata, credentials
from component.memory_helpers import Stub, error_info, expect_error, expect_invalid, uid, unique

pytestmark = pytest.mark.component

PURGE_AFTER = timedelta(days=7)  # the default AGENTMESH_MEMORY_SESSION_PURGE_AFTER_S
NOT_FOUND = grpc.StatusCode.NOT_FOUND


# ------------------------------------------------------------------ helpers


def fresh_tenant() -> tuple[str, Metadata]:
    tenant = f"soft-{uid()}"
    return tenant, credentials(tenant)


async def create(
    memory: Stub, auth: Metadata, session_id: str, **fields: Any
) -> memory_pb2.Session:
    return await memory.CreateSession(
        memory_pb2.CreateSessionRequest(
            session=memory_pb2.Session(**fields), session_id=session_id
        ),
        metadata=auth,
    )


async def delete(memory: Stub, auth: Metadata, name: str, **fields: Any) -> None:
    await memory.DeleteSession(memory_pb2.DeleteSessionRequest(name=name, **fields), metadata=auth)


async def undelete(memory: Stub, auth: Metadata, name: str) -> memory_pb2.Session:
    return await memory.UndeleteSession(memory_pb2.UndeleteSessionRequest(name=name), metadata=auth)


async def append(memory: Stub, auth: Metadata, name: str, *texts: str) -> None:
    await memory.AppendMessages(
        memory_pb2.AppendMessagesRequest(
            parent=name,
            messages=[
                memory_pb2.Message(role=common_pb2.ROLE_USER, parts=[common_pb2.Part(text=text)])
                for text in texts
            ],
        ),
        metadata=auth,
    )


async def texts(memory: Stub, auth: Metadata, name: str) -> list[str]:
    listed = await memory.ListMessages(memory_pb2.ListMessagesRequest(parent=name), metadata=auth)
    return [message.parts[0].text for message in listed.messages]


def checkpoint(
    thread_id: str, checkpoint_id: str, run_id: str = ""
) -> memory_pb2.PutCheckpointRequest:
    return memory_pb2.PutCheckpointRequest(
        checkpoint=memory_pb2.Checkpoint(
            thread_id=thread_id,
            checkpoint_id=checkpoint_id,
            checkpoint=memory_pb2.TypedValue(type="json", data=b"{}"),
            metadata_json=json.dumps({"run_id": run_id} if run_id else {}),
        )
    )


def write_request(thread_id: str, checkpoint_id: str) -> memory_pb2.PutCheckpointWritesRequest:
    return memory_pb2.PutCheckpointWritesRequest(
        thread_id=thread_id,
        checkpoint_id=checkpoint_id,
        writes=[
            memory_pb2.PendingWrite(
                task_id="t1", channel="c", value=memory_pb2.TypedValue(type="json", data=b"1")
            )
        ],
    )


async def listed_threads(memory: Stub, auth: Metadata, thread_id: str = "") -> list[str]:
    found = await memory.ListCheckpoints(
        memory_pb2.ListCheckpointsRequest(thread_id=thread_id), metadata=auth
    )
    return sorted(t.checkpoint.thread_id for t in found.checkpoints)


async def list_sessions(
    memory: Stub, auth: Metadata, filter_text: str = "", *, show_deleted: bool = False
) -> list[memory_pb2.Session]:
    sessions: list[memory_pb2.Session] = []
    token = ""
    while True:
        page = await memory.ListSessions(
            memory_pb2.ListSessionsRequest(
                filter=filter_text, show_deleted=show_deleted, page_size=2, page_token=token
            ),
            metadata=auth,
        )
        sessions.extend(page.sessions)
        token = page.next_page_token
        if not token:
            return sessions


def resource_name(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(cast(grpc.Call, error))
    assert status is not None
    resource = error_details_pb2.ResourceInfo()
    assert any(detail.Unpack(resource) for detail in status.details)
    return resource.resource_name


async def make_due(db: asyncpg.Pool, tenant: str, session_id: str) -> None:
    """Moves a deleted session's purge time into the past, as if its window had passed."""
    moved = await db.execute(
        "UPDATE memory.sessions SET delete_time = now() - interval '8 days',"
        " purge_time = now() - interval '1 day' WHERE tenant = $1 AND id = $2"
        " AND delete_time IS NOT NULL",
        tenant,
        session_id,
    )
    assert moved == "UPDATE 1"


# ------------------------------------------------------------------ everywhere deleted


async def test_a_deleted_session_is_not_found_everywhere_but_kept_in_storage(
    memory: Stub, db: asyncpg.Pool, redis_client: redis.asyncio.Redis
) -> None:
    tenant, auth = fresh_tenant()
    session_id = unique()
    name = f"sessions/{session_id}"
    run = uid()
    await create(memory, auth, session_id, labels={"run": run})
    await append(memory, auth, name, "one", "two")
    wm = f"{name}/workingMemory"
    await memory.UpdateWorkingMemory(
        memory_pb2.UpdateWorkingMemoryRequest(
            working_memory=memory_pb2.WorkingMemory(
                name=wm, values={"k": struct_pb2.Value(number_value=1)}
            )
        ),
        metadata=auth,
    )
    # Its threads, and two threads of no session: by convention only `<id>` and
    # `<id>:<suffix>` belong to it.
    own, sub, other, lookalike = session_id, f"{session_id}:sub", f"t-{uid()}", f"{session_id}x"
    for thread in (own, sub, other, lookalike):
        await memory.PutCheckpoint(checkpoint(thread, "c1", run_id=f"run-{run}"), metadata=auth)
        await memory.PutCheckpointWrites(write_request(thread, "c1"), metadata=auth)

    await delete(memory, auth, name)

    await expect_error(
        memory.GetSession(memory_pb2.GetSessionRequest(name=name), metadata=auth), NOT_FOUND
    )
    await expect_error(
        memory.UpdateSession(
            memory_pb2.UpdateSessionRequest(
                session=memory_pb2.Session(name=name, display_name="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
            metadata=auth,
        ),
        NOT_FOUND,
    )
    assert await list_sessions(memory, auth, f'labels.run = "{run}"') == []
    await expect_error(texts(memory, auth, name), NOT_FOUND)
    await expect_error(append(memory, auth, name, "three"), NOT_FOUND)
    await expect_error(
        memory.GetWorkingMemory(memory_pb2.GetWorkingMemoryRequest(name=wm), metadata=auth),
        NOT_FOUND,
    )
    await expect_error(
        memory.UpdateWorkingMemory(
            memory_pb2.UpdateWorkingMemoryRequest(working_memory=memory_pb2.WorkingMemory(name=wm)),
            metadata=auth,
        ),
        NOT_FOUND,
    )
    # Its threads look empty to reads ...
    for thread in (own, sub):
        await expect_error(
            memory.GetCheckpoint(memory_pb2.GetCheckpointRequest(thread_id=thread), metadata=auth),
            NOT_FOUND,
        )
        assert await listed_threads(memory, auth, thread) == []
    assert await listed_threads(memory, auth) == sorted([other, lookalike])
    await expect_error(
        memory.CopyThread(
            memory_pb2.CopyThreadRequest(source_thread_id=sub, target_thread_id=f"t-{uid()}"),
            metadata=auth,
        ),
        NOT_FOUND,
    )
    # ... writes to them are NOT_FOUND naming the session ...
    for call in (
        memory.PutCheckpoint(checkpoint(sub, "c2"), metadata=auth),
        memory.PutCheckpointWrites(write_request(own, "c2"), metadata=auth),
        memory.CopyThread(
            memory_pb2.CopyThreadRequest(
                source_thread_id=other, target_thread_id=f"{session_id}:copy"
            ),
            metadata=auth,
        ),
    ):
        error = await expect_error(call, NOT_FOUND)
        assert resource_name(error) == name
    # ... and deletions leave them alone.
    for thread in (own, sub):
        gone = await memory.DeleteThread(
            memory_pb2.DeleteThreadRequest(thread_id=thread), metadata=auth
        )
        assert gone.deleted_checkpoints == 0
    by_run = await memory.DeleteCheckpointsForRuns(
        memory_pb2.DeleteCheckpointsForRunsRequest(run_ids=[f"run-{run}"]), metadata=auth
    )
    assert by_run.deleted_checkpoints == 2  # `other` and `lookalike` only
    await memory.PruneCheckpoints(
        memory_pb2.PruneCheckpointsRequest(thread_ids=[own, sub], keep_latest=1), metadata=auth
    )

    # Everything is still stored, untouched, until the purge.
    row = await db.fetchrow(
        "SELECT delete_time, purge_time, message_count FROM memory.sessions"
        " WHERE tenant = $1 AND id = $2",
        tenant,
        session_id,
    )
    assert row["purge_time"] - row["delete_time"] == PURGE_AFTER
    assert row["message_count"] == 2
    messages = "SELECT count(*) FROM memory.messages WHERE tenant = $1 AND session_id = $2"
    assert await db.fetchval(messages, tenant, session_id) == 2
    kept = await db.fetch(
        "SELECT thread_id, checkpoint_id FROM memory.checkpoints WHERE tenant = $1"
        " ORDER BY thread_id",
        tenant,
    )
    assert [tuple(r) for r in kept] == [(own, "c1"), (sub, "c1")]
    writes = "SELECT count(*) FROM memory.checkpoint_writes WHERE tenant = $1 AND thread_id = $2"
    assert [await db.fetchval(writes, tenant, t) for t in (own, sub)] == [1, 1]
    assert await redis_client.exists(f"agentmesh:wm:{tenant}:{session_id}") == 1


async def test_undelete_gives_the_session_back_whole(memory: Stub) -> None:
    _, auth = fresh_tenant()
    session_id = unique()
    name = f"sessions/{session_id}"
    created = await create(memory, auth, session_id, display_name="keep me", labels={"k": "v"})
    await append(memory, auth, name, "one", "two")
    await memory.UpdateWorkingMemory(
        memory_pb2.UpdateWorkingMemoryRequest(
            working_memory=memory_pb2.WorkingMemory(
                name=f"{name}/workingMemory", values={"step": struct_pb2.Value(string_value="pay")}
            )
        ),
        metadata=auth,
    )
    await memory.PutCheckpoint(checkpoint(f"{session_id}:agent", "c1"), metadata=auth)
    before = await memory.GetSession(memory_pb2.GetSessionRequest(name=name), metadata=auth)

    await delete(memory, auth, name)
    restored = await undelete(memory, auth, name)

    assert not restored.HasField("delete_time")
    assert not restored.HasField("purge_time")
    assert restored.etag != before.etag  # the undelete is a change of the session
    for field in (
        "name",
        "display_name",
        "labels",
        "message_count",
        "last_sequence",
        "create_time",
    ):
        assert getattr(restored, field) == getattr(before, field), field
    assert (
        await memory.GetSession(memory_pb2.GetSessionRequest(name=name), metadata=auth) == restored
    )
    assert await texts(memory, auth, name) == ["one", "two"]
    working = await memory.GetWorkingMemory(
        memory_pb2.GetWorkingMemoryRequest(name=f"{name}/workingMemory"), metadata=auth
    )
    assert working.values["step"] == struct_pb2.Value(string_value="pay")
    found = await memory.GetCheckpoint(
        memory_pb2.GetCheckpointRequest(thread_id=f"{session_id}:agent"), metadata=auth
    )
    assert found.checkpoint.checkpoint_id == "c1"
    # It is live again: appends continue the sequence, updates work with its new etag.
    await append(memory, auth, name, "three")
    assert await texts(memory, auth, name) == ["one", "two", "three"]
    updated = await memory.UpdateSession(
        memory_pb2.UpdateSessionRequest(
            session=memory_pb2.Session(name=name, display_name="back", etag=restored.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=auth,
    )
    assert updated.display_name == "back"
    assert created.etag != restored.etag


async def test_etags_read_before_the_delete_are_stale_after_the_undelete(memory: Stub) -> None:
    _, auth = fresh_tenant()
    session_id = unique()
    name = f"sessions/{session_id}"
    created = await create(memory, auth, session_id)
    await delete(memory, auth, name, etag=created.etag)
    await undelete(memory, auth, name)
    error = await expect_error(
        memory.UpdateSession(
            memory_pb2.UpdateSessionRequest(
                session=memory_pb2.Session(name=name, display_name="lost", etag=created.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
            metadata=auth,
        ),
        grpc.StatusCode.ABORTED,
    )
    assert error_info(error).reason == "ETAG_MISMATCH"
    await expect_error(delete(memory, auth, name, etag=created.etag), grpc.StatusCode.ABORTED)


# ------------------------------------------------------------------ delete is idempotent


async def test_deleting_a_deleted_session_changes_nothing(memory: Stub, db: asyncpg.Pool) -> None:
    tenant, auth = fresh_tenant()
    session_id = unique()
    name = f"sessions/{session_id}"
    created = await create(memory, auth, session_id)
    await delete(memory, auth, name)
    query = (
        "SELECT delete_time, purge_time, version FROM memory.sessions WHERE tenant = $1 AND id = $2"
    )
    first = await db.fetchrow(query, tenant, session_id)

    await expect_error(delete(memory, auth, name), NOT_FOUND)
    await expect_error(delete(memory, auth, name, etag=created.etag), NOT_FOUND)
    await delete(memory, auth, name, allow_missing=True)
    await delete(memory, auth, name, allow_missing=True, etag=created.etag)

    assert await db.fetchrow(query, tenant, session_id) == first  # purge_time did not move


# ------------------------------------------------------------------ listing


async def test_show_deleted_lists_deleted_sessions_with_their_times(memory: Stub) -> None:
    _, auth = fresh_tenant()
    run = uid()
    live = await create(memory, auth, unique(), labels={"run": run})
    gone = await create(memory, auth, unique(), labels={"run": run})
    await delete(memory, auth, gone.name)
    by_run = f'labels.run = "{run}"'

    assert [s.name for s in await list_sessions(memory, auth, by_run)] == [live.name]
    both = await list_sessions(memory, auth, by_run, show_deleted=True)
    assert [s.name for s in both] == [gone.name, live.name]  # newest first, as ever
    deleted, alive = both
    assert not alive.HasField("delete_time")
    assert not alive.HasField("purge_time")
    assert deleted.HasField("delete_time")
    assert deleted.purge_time.ToDatetime() - deleted.delete_time.ToDatetime() == PURGE_AFTER
    assert deleted.create_time == gone.create_time
    assert deleted.etag != gone.etag  # the delete moved the version

    only_deleted = f'{by_run} AND delete_time >= "1970-01-01T00:00:00Z"'
    assert [s.name for s in await list_sessions(memory, auth, only_deleted, show_deleted=True)] == [
        gone.name
    ]
    assert await list_sessions(memory, auth, only_deleted) == []


async def test_a_page_token_holds_only_for_the_same_show_deleted(memory: Stub) -> None:
    _, auth = fresh_tenant()
    for _ in range(3):
        await create(memory, auth, unique())
    first = await memory.ListSessions(
        memory_pb2.ListSessionsRequest(page_size=1, show_deleted=True), metadata=auth
    )
    assert first.next_page_token
    await expect_invalid(
        memory.ListSessions(
            memory_pb2.ListSessionsRequest(page_size=1, page_token=first.next_page_token),
            metadata=auth,
        ),
        "page_token",
    )


async def test_a_session_past_its_purge_time_is_not_listed_even_with_show_deleted(
    memory: Stub, db: asyncpg.Pool
) -> None:
    tenant, auth = fresh_tenant()
    session_id = unique()
    await create(memory, auth, session_id)
    await delete(memory, auth, f"sessions/{session_id}")
    await make_due(db, tenant, session_id)
    assert await list_sessions(memory, auth, show_deleted=True) == []


# ------------------------------------------------------------------ the id stays taken


async def test_creating_a_deleted_sessions_id_is_already_exists_until_the_purge(
    memory: Stub, db: asyncpg.Pool, redis_client: redis.asyncio.Redis
) -> None:
    tenant, auth = fresh_tenant()
    session_id = unique()
    name = f"sessions/{session_id}"
    old = await create(memory, auth, session_id, display_name="old")
    await append(memory, auth, name, "old message")
    await memory.UpdateWorkingMemory(
        memory_pb2.UpdateWorkingMemoryRequest(
            working_memory=memory_pb2.WorkingMemory(
                name=f"{name}/workingMemory", values={"k": struct_pb2.Value(string_value="old")}
            )
        ),
        metadata=auth,
    )
    await memory.PutCheckpoint(checkpoint(session_id, "c1"), metadata=auth)
    await delete(memory, auth, name)
    listed = await list_sessions(memory, auth, show_deleted=True)
    purge = listed[0].purge_time.ToJsonString()

    error = await expect_error(create(memory, auth, session_id), grpc.StatusCode.ALREADY_EXISTS)
    info = error_info(error)
    assert info.reason == "SESSION_DELETED"
    assert info.metadata["resource_name"] == name
    assert info.metadata["purge_time"] == purge
    assert info.metadata["delete_time"] == listed[0].delete_time.ToJsonString()
    assert "deleted" in (error.details() or "")
    assert purge in (error.details() or "")
    # A live session's id is the plain conflict, as before.
    live_id = unique()
    await create(memory, auth, live_id)
    plain = await expect_error(create(memory, auth, live_id), grpc.StatusCode.ALREADY_EXISTS)
    assert error_info(plain).reason == "RESOURCE_ALREADY_EXISTS"

    # Once the purge time has passed the id is free, whether or not the janitor has
    # purged the row yet: the create purges it, and the new session starts empty.
    await make_due(db, tenant, session_id)
    await expect_error(undelete(memory, auth, name), NOT_FOUND)
    new = await create(memory, auth, session_id, display_name="new")
    assert new.display_name == "new"
    assert new.etag != old.etag
    assert await texts(memory, auth, name) == []
    working = await memory.GetWorkingMemory(
        memory_pb2.GetWorkingMemoryRequest(name=f"{name}/workingMemory"), metadata=auth
    )
    assert not working.values
    assert await redis_client.exists(f"agentmesh:wm:{tenant}:{session_id}") == 0
    await expect_error(
        memory.GetCheckpoint(memory_pb2.GetCheckpointRequest(thread_id=session_id), metadata=auth),
        NOT_FOUND,
    )


# ------------------------------------------------------------------ undelete errors


async def test_undelete_errors(memory: Stub, db: asyncpg.Pool) -> None:
    tenant, auth = fresh_tenant()
    await expect_error(undelete(memory, auth, f"sessions/{unique()}"), NOT_FOUND)
    await expect_invalid(undelete(memory, auth, "sessions/Bad_Name"), "name")
    await expect_invalid(undelete(memory, auth, ""), "name")

    live = await create(memory, auth, unique())
    error = await expect_error(undelete(memory, auth, live.name), grpc.StatusCode.ALREADY_EXISTS)
    assert error_info(error).reason == "RESOURCE_ALREADY_EXISTS"
    assert "not deleted" in (error.details() or "")

    # A retried undelete (the first one's answer lost) finds it live: ALREADY_EXISTS.
    await delete(memory, auth, live.name)
    await undelete(memory, auth, live.name)
    await expect_error(undelete(memory, auth, live.name), grpc.StatusCode.ALREADY_EXISTS)

    # Past its purge time it is purged for every purpose, even before the janitor runs.
    session_id = unique()
    await create(memory, auth, session_id)
    await delete(memory, auth, f"sessions/{session_id}")
    await make_due(db, tenant, session_id)
    await expect_error(undelete(memory, auth, f"sessions/{session_id}"), NOT_FOUND)


# ------------------------------------------------------------------ tenants


async def test_another_tenant_never_sees_undeletes_or_blocks_a_deleted_session(
    memory: Stub,
) -> None:
    _, auth_a = fresh_tenant()
    _, auth_b = fresh_tenant()
    session_id = unique()
    name = f"sessions/{session_id}"
    await create(memory, auth_a, session_id)
    await delete(memory, auth_a, name)

    assert await list_sessions(memory, auth_b, show_deleted=True) == []
    await expect_error(undelete(memory, auth_b, name), NOT_FOUND)
    await expect_error(delete(memory, auth_b, name), NOT_FOUND)
    # The id is the deleted session's only in its own tenant.
    theirs = await create(memory, auth_b, session_id, display_name="b's own")
    await append(memory, auth_b, name, "b")
    await memory.PutCheckpoint(checkpoint(session_id, "c1"), metadata=auth_b)
    assert await listed_threads(memory, auth_b, session_id) == [session_id]
    assert await texts(memory, auth_b, name) == ["b"]

    restored = await undelete(memory, auth_a, name)
    assert restored.display_name == ""
    assert await texts(memory, auth_a, name) == []
    fetched_b = await memory.GetSession(memory_pb2.GetSessionRequest(name=name), metadata=auth_b)
    assert fetched_b.display_name == theirs.display_name
