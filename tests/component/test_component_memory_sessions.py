"""MemoryService sessions over real gRPC: create, get, list, update, delete."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest
import redis.asyncio
from google.protobuf import field_mask_pb2, struct_pb2

from agentmesh.core.names import ID_PATTERN
from agentmesh.core.paging import encode_page_token
from agentmesh.memory.stores.sessions import delete_session_threads
from agentmesh.v1 import common_pb2, memory_pb2

# `component.conftest`, not `conftest`: the name mypy resolves too (mypy_path has tests/).
from component.conftest import Backends, Metadata
from component.memory_helpers import (
    HARD_DELETE,
    Stub,
    expect_error,
    expect_invalid,
    serve_memory,
    struct,
    unique,
    violated_fields,
)


@pytest.fixture(scope="module")
async def hard_delete(backends: Backends) -> AsyncIterator[Stub]:
    """A Memory server whose purge window is 0: DeleteSession removes the session and
    everything it holds at once, as before soft delete (the soft delete's own tests are
    in test_component_memory_soft_delete.py)."""
    async with serve_memory(backends, **HARD_DELETE) as stub:
        yield stub


# ------------------------------------------------------------------ helpers


async def create(
    memory: Stub, auth: Metadata, session_id: str | None = None, **fields: Any
) -> memory_pb2.Session:
    """Creates a session; ``fields`` are Session fields (``metadata`` included)."""
    return await memory.CreateSession(
        memory_pb2.CreateSessionRequest(
            session=memory_pb2.Session(**fields), session_id=session_id or unique()
        ),
        metadata=auth,
    )


async def session_rows(db: asyncpg.Pool, session_id: str) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM memory.sessions WHERE id = $1", session_id)
    return count


async def list_all(
    memory: Stub, metadata: Metadata, filter_text: str, page_size: int
) -> list[memory_pb2.Session]:
    """Walks every page of a filtered listing."""
    sessions: list[memory_pb2.Session] = []
    token = ""
    for _ in range(100):
        page = await memory.ListSessions(
            memory_pb2.ListSessionsRequest(
                filter=filter_text, page_size=page_size, page_token=token
            ),
            metadata=metadata,
        )
        assert len(page.sessions) <= page_size
        sessions.extend(page.sessions)
        token = page.next_page_token
        if not token:
            return sessions
    raise AssertionError("pagination did not end")


# ------------------------------------------------------------------ create / get


async def test_create_then_get_returns_the_stored_session(memory: Stub, tenant_a: Metadata) -> None:
    session_id = unique()
    created = await create(
        memory,
        tenant_a,
        session_id,
        display_name="Refund for order 42",
        labels={"channel": "web", "tier": ""},
        metadata=struct(order=42, tags=["a", "b"], nested={"ok": True}),
    )
    assert created.name == f"sessions/{session_id}"
    assert created.display_name == "Refund for order 42"
    assert dict(created.labels) == {"channel": "web", "tier": ""}
    assert created.metadata == struct(order=42, tags=["a", "b"], nested={"ok": True})
    assert (created.message_count, created.last_sequence) == (0, 0)
    assert created.HasField("create_time")
    assert created.update_time == created.create_time
    assert created.etag
    fetched = await memory.GetSession(
        memory_pb2.GetSessionRequest(name=created.name), metadata=tenant_a
    )
    assert fetched == created


async def test_create_without_id_generates_a_valid_one(memory: Stub, tenant_a: Metadata) -> None:
    created = await memory.CreateSession(
        memory_pb2.CreateSessionRequest(session=memory_pb2.Session()), metadata=tenant_a
    )
    session_id = created.name.removeprefix("sessions/")
    assert ID_PATTERN.fullmatch(session_id)
    again = await memory.CreateSession(
        memory_pb2.CreateSessionRequest(session=memory_pb2.Session()), metadata=tenant_a
    )
    assert again.name != created.name


async def test_create_with_a_request_id_twice_creates_once(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    request = memory_pb2.CreateSessionRequest(
        session=memory_pb2.Session(display_name="once"), request_id=str(uuid.uuid4())
    )
    first, second = await asyncio.gather(
        memory.CreateSession(request, metadata=tenant_a),
        memory.CreateSession(request, metadata=tenant_a),
    )
    third = await memory.CreateSession(request, metadata=tenant_a)
    assert first == second == third
    assert await session_rows(db, first.name.removeprefix("sessions/")) == 1


async def test_create_with_a_taken_id_is_already_exists_unless_replayed(
    memory: Stub, tenant_a: Metadata
) -> None:
    session_id = unique()
    request_id = str(uuid.uuid4())
    request = memory_pb2.CreateSessionRequest(
        session=memory_pb2.Session(), session_id=session_id, request_id=request_id
    )
    first = await memory.CreateSession(request, metadata=tenant_a)
    assert await memory.CreateSession(request, metadata=tenant_a) == first
    other_request = memory_pb2.CreateSessionRequest(
        session=memory_pb2.Session(), session_id=session_id, request_id=str(uuid.uuid4())
    )
    await expect_error(
        memory.CreateSession(other_request, metadata=tenant_a), grpc.StatusCode.ALREADY_EXISTS
    )
    no_request_id = memory_pb2.CreateSessionRequest(
        session=memory_pb2.Session(), session_id=session_id
    )
    await expect_error(
        memory.CreateSession(no_request_id, metadata=tenant_a), grpc.StatusCode.ALREADY_EXISTS
    )


async def test_a_request_id_reused_for_a_different_request_is_invalid(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    """AIP-155 replays the response of the *same* request; another request carrying the
    key is refused instead of answered with the first one's session."""
    request_id = str(uuid.uuid4())
    first = await memory.CreateSession(
        memory_pb2.CreateSessionRequest(
            session=memory_pb2.Session(display_name="first"), request_id=request_id
        ),
        metadata=tenant_a,
    )
    for other in (
        memory_pb2.CreateSessionRequest(
            session=memory_pb2.Session(display_name="second"), request_id=request_id
        ),
        memory_pb2.CreateSessionRequest(
            session=memory_pb2.Session(display_name="first"),
            session_id=unique(),
            request_id=request_id,
        ),
    ):
        error = await expect_error(
            memory.CreateSession(other, metadata=tenant_a), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert violated_fields(error) == {"request_id"}
        assert "already used for a different request" in (error.details() or "")
    # Only the first session exists, and the original request still replays.
    created = await db.fetchval(
        "SELECT count(*) FROM memory.sessions WHERE tenant = 'tenant-a' AND display_name = 'second'"
    )
    assert created == 0
    replay = await memory.CreateSession(
        memory_pb2.CreateSessionRequest(
            session=memory_pb2.Session(display_name="first"), request_id=request_id
        ),
        metadata=tenant_a,
    )
    assert replay == first


async def test_racing_requests_with_one_request_id_create_one_session(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    """The second waits for the first's transaction, then sees its fingerprint."""
    request_id, marker = str(uuid.uuid4()), unique("race")
    outcomes = await asyncio.gather(
        *(
            memory.CreateSession(
                memory_pb2.CreateSessionRequest(
                    session=memory_pb2.Session(display_name=f"{marker}-{i}"),
                    request_id=request_id,
                ),
                metadata=tenant_a,
            )
            for i in range(2)
        ),
        return_exceptions=True,
    )
    created = [o for o in outcomes if isinstance(o, memory_pb2.Session)]
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(created) == 1
    assert [e.code() for e in refused] == [grpc.StatusCode.INVALID_ARGUMENT]
    rows = await db.fetchval(
        "SELECT count(*) FROM memory.sessions WHERE display_name LIKE $1", f"{marker}-%"
    )
    assert rows == 1


async def test_request_ids_claimed_before_fingerprints_still_replay(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    """Keys stored before the fingerprint column existed have none: they replay the
    stored response, as they did then, whatever the retry carries."""
    request_id = str(uuid.uuid4())
    first = await memory.CreateSession(
        memory_pb2.CreateSessionRequest(
            session=memory_pb2.Session(display_name="old"), request_id=request_id
        ),
        metadata=tenant_a,
    )
    await db.execute(
        "UPDATE memory.request_ids SET fingerprint = NULL"
        " WHERE tenant = 'tenant-a' AND method = 'CreateSession' AND request_id = $1",
        request_id,
    )
    replay = await memory.CreateSession(
        memory_pb2.CreateSessionRequest(
            session=memory_pb2.Session(display_name="changed"), request_id=request_id
        ),
        metadata=tenant_a,
    )
    assert replay == first


@pytest.mark.parametrize(
    ("request_fields", "session_fields", "field"),
    [
        ({"session_id": "UPPER"}, {}, "session_id"),
        ({"session_id": "1starts-with-digit"}, {}, "session_id"),
        ({"session_id": "x" * 64}, {}, "session_id"),
        ({"request_id": "r" * 129}, {}, "request_id"),
        ({}, {"display_name": "n" * 257}, "session.display_name"),
        ({}, {"labels": {"Bad Key": "v"}}, 'session.labels["Bad Key"]'),
        ({}, {"labels": {"k": "Bad Value"}}, 'session.labels["k"]'),
        ({}, {"labels": {"k": "v" * 64}}, 'session.labels["k"]'),
        ({}, {"labels": {f"k{i}": "v" for i in range(65)}}, "session.labels"),
        ({}, {"metadata": struct(blob="x" * 65_536)}, "session.metadata"),
        ({}, {"metadata": struct(n=float("nan"))}, "session.metadata"),
    ],
)
async def test_create_rejects_bad_input_and_writes_nothing(
    memory: Stub,
    tenant_a: Metadata,
    db: asyncpg.Pool,
    request_fields: dict[str, str],
    session_fields: dict[str, Any],
    field: str,
) -> None:
    session_id = str(request_fields.get("session_id") or unique())
    request = memory_pb2.CreateSessionRequest(
        session=memory_pb2.Session(**session_fields), **{"session_id": session_id, **request_fields}
    )
    await expect_invalid(memory.CreateSession(request, metadata=tenant_a), field)
    assert await session_rows(db, session_id) == 0


async def test_create_reports_every_bad_field_at_once(memory: Stub, tenant_a: Metadata) -> None:
    request = memory_pb2.CreateSessionRequest(
        session=memory_pb2.Session(display_name="n" * 300, labels={"A": "b"}),
        session_id="Bad_Id",
    )
    await expect_invalid(
        memory.CreateSession(request, metadata=tenant_a),
        "session_id",
        "session.display_name",
        'session.labels["A"]',
    )


@pytest.mark.parametrize("name", ["", "sessions/UPPER", "session/x", "sessions/", "sessions/a/b"])
async def test_get_with_a_malformed_name_is_invalid(
    memory: Stub, tenant_a: Metadata, name: str
) -> None:
    await expect_invalid(
        memory.GetSession(memory_pb2.GetSessionRequest(name=name), metadata=tenant_a), "name"
    )


async def test_get_unknown_is_not_found(memory: Stub, tenant_a: Metadata) -> None:
    await expect_error(
        memory.GetSession(memory_pb2.GetSessionRequest(name="sessions/nope"), metadata=tenant_a),
        grpc.StatusCode.NOT_FOUND,
    )


# ------------------------------------------------------------------ list


async def test_list_walks_every_page_newest_first_with_ties_by_name(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    run = unique("run")
    created = [await create(memory, tenant_a, labels={"run": run}) for _ in range(5)]
    # Three sessions with the very same create_time: the order must still be total.
    tied = sorted(unique("tie") for _ in range(3))
    await db.executemany(
        "INSERT INTO memory.sessions (tenant, id, labels, create_time)"
        " VALUES ('tenant-a', $1, $2::jsonb, '2020-01-01T00:00:00Z')",
        [(session_id, json.dumps({"run": run})) for session_id in reversed(tied)],
    )
    listed = await list_all(memory, tenant_a, f'labels.run = "{run}"', page_size=3)
    names = [session.name for session in listed]
    expected = [session.name for session in reversed(created)] + [f"sessions/{t}" for t in tied]
    assert names == expected
    # A second walk with another page size gives the same order (stable).
    assert [s.name for s in await list_all(memory, tenant_a, f'labels.run = "{run}"', 2)] == names


async def test_list_without_filter_is_ordered_across_pages(
    memory: Stub, tenant_a: Metadata
) -> None:
    await create(memory, tenant_a)
    listed = await list_all(memory, tenant_a, "", page_size=7)
    keys = [(-s.create_time.ToMicroseconds(), s.name) for s in listed]
    assert keys == sorted(keys)
    assert len({s.name for s in listed}) == len(listed)


async def test_list_filters_on_labels_and_time(memory: Stub, tenant_a: Metadata) -> None:
    run = unique("run")
    first = await create(memory, tenant_a, labels={"run": run, "channel": "web"})
    second = await create(memory, tenant_a, labels={"run": run, "channel": "sms"})
    third = await create(memory, tenant_a, labels={"run": run, "channel": "web"})

    async def names(filter_text: str) -> list[str]:
        return [s.name for s in await list_all(memory, tenant_a, filter_text, page_size=50)]

    assert await names(f'labels.run = "{run}" AND labels.channel = "web"') == [
        third.name,
        first.name,
    ]
    since = second.create_time.ToJsonString()
    assert await names(f'labels.run = "{run}" AND create_time >= "{since}"') == [
        third.name,
        second.name,
    ]
    assert await names(f'labels.run = "{run}" AND create_time < "{since}"') == [first.name]
    assert await names(f'labels.run = "{run}" AND update_time > "{since}"') == [third.name]
    assert await names(f'labels.run = "{run}" AND labels.channel = "fax"') == []


@pytest.mark.parametrize(
    "filter_text",
    [
        'color = "red"',
        'labels.run > "a"',
        'create_time >= "yesterday"',
        'create_time >= "2026-01-01T00:00:00"',
        'labels.run = "a" OR labels.run = "b"',
        "labels.run =",
    ],
)
async def test_list_with_a_bad_filter_is_invalid(
    memory: Stub, tenant_a: Metadata, filter_text: str
) -> None:
    await expect_invalid(
        memory.ListSessions(memory_pb2.ListSessionsRequest(filter=filter_text), metadata=tenant_a),
        "filter",
    )


async def test_list_rejects_foreign_and_forged_page_tokens(
    memory: Stub, tenant_a: Metadata
) -> None:
    run = unique("run")
    for _ in range(3):
        await create(memory, tenant_a, labels={"run": run})
    page = await memory.ListSessions(
        memory_pb2.ListSessionsRequest(filter=f'labels.run = "{run}"', page_size=1),
        metadata=tenant_a,
    )
    assert page.next_page_token
    other_filter = memory_pb2.ListSessionsRequest(
        filter='labels.run = "other"', page_token=page.next_page_token
    )
    await expect_invalid(memory.ListSessions(other_filter, metadata=tenant_a), "page_token")
    for forged in ["garbage!", "eyJwIjp7fSwicSI6IngifQ", page.next_page_token[:-4]]:
        await expect_invalid(
            memory.ListSessions(
                memory_pb2.ListSessionsRequest(filter=f'labels.run = "{run}"', page_token=forged),
                metadata=tenant_a,
            ),
            "page_token",
        )
    await expect_invalid(
        memory.ListSessions(memory_pb2.ListSessionsRequest(page_size=-1), metadata=tenant_a),
        "page_size",
    )


@pytest.mark.parametrize(
    "position",
    [
        {},
        {"t": "yesterday", "id": "a"},
        {"t": "2026-01-01T00:00:00", "id": "a"},
        {"t": "2026-01-01T00:00:00+00:00", "id": 7},
        {"t": 5, "id": "a"},
        # The current format: (create time in microseconds, id), ill-typed.
        [],
        [5],
        ["2026-01-01T00:00:00+00:00", "a"],
        [5, 7],
        [True, "a"],
        [2**63, "a"],
        [5, "a", "b"],
    ],
)
async def test_list_rejects_crafted_tokens_with_a_matching_filter(
    memory: Stub, tenant_a: Metadata, position: Any
) -> None:
    """Tokens are not signed: one built by a client for the right filter must still
    be refused when its position is not one the server would have written."""
    filter_text = 'labels.run = "crafted"'
    token = encode_page_token(position, {"filter": filter_text})
    await expect_invalid(
        memory.ListSessions(
            memory_pb2.ListSessionsRequest(filter=filter_text, page_token=token),
            metadata=tenant_a,
        ),
        "page_token",
    )


# ------------------------------------------------------------------ update


async def test_update_writes_only_the_masked_fields_and_bumps_the_etag(
    memory: Stub, tenant_a: Metadata
) -> None:
    created = await create(
        memory, tenant_a, display_name="old", labels={"a": "1"}, metadata=struct(x=1)
    )
    updated = await memory.UpdateSession(
        memory_pb2.UpdateSessionRequest(
            session=memory_pb2.Session(name=created.name, display_name="new", labels={"b": "2"}),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=tenant_a,
    )
    assert updated.display_name == "new"
    assert dict(updated.labels) == {"a": "1"}
    assert updated.metadata == struct(x=1)
    assert updated.etag != created.etag
    assert updated.update_time.ToMicroseconds() > created.update_time.ToMicroseconds()
    assert updated.create_time == created.create_time
    fetched = await memory.GetSession(
        memory_pb2.GetSessionRequest(name=created.name), metadata=tenant_a
    )
    assert fetched == updated


async def test_update_with_a_star_mask_replaces_all_three(memory: Stub, tenant_a: Metadata) -> None:
    created = await create(
        memory, tenant_a, display_name="old", labels={"a": "1"}, metadata=struct(x=1)
    )
    updated = await memory.UpdateSession(
        memory_pb2.UpdateSessionRequest(
            session=memory_pb2.Session(name=created.name, labels={"b": "2"}),
            update_mask=field_mask_pb2.FieldMask(paths=["*"]),
        ),
        metadata=tenant_a,
    )
    assert updated.display_name == ""
    assert dict(updated.labels) == {"b": "2"}
    assert updated.metadata == struct_pb2.Struct()


async def test_update_without_a_mask_writes_only_the_fields_present(
    memory: Stub, tenant_a: Metadata
) -> None:
    """AIP-134: an absent mask means the populated fields, so a web client's PATCH of
    one field never clears the others."""
    created = await create(
        memory, tenant_a, display_name="old", labels={"a": "1"}, metadata=struct(x=1)
    )
    updated = await memory.UpdateSession(
        memory_pb2.UpdateSessionRequest(
            session=memory_pb2.Session(name=created.name, labels={"b": "2"})
        ),
        metadata=tenant_a,
    )
    assert updated.display_name == "old"
    assert dict(updated.labels) == {"b": "2"}
    assert updated.metadata == struct(x=1)


async def test_update_with_a_stale_etag_is_aborted_and_changes_nothing(
    memory: Stub, tenant_a: Metadata
) -> None:
    created = await create(memory, tenant_a, display_name="v1")
    current = await memory.UpdateSession(
        memory_pb2.UpdateSessionRequest(
            session=memory_pb2.Session(name=created.name, display_name="v2", etag=created.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=tenant_a,
    )
    stale = memory_pb2.UpdateSessionRequest(
        session=memory_pb2.Session(name=created.name, display_name="v3", etag=created.etag),
        update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
    )
    await expect_error(memory.UpdateSession(stale, metadata=tenant_a), grpc.StatusCode.ABORTED)
    fetched = await memory.GetSession(
        memory_pb2.GetSessionRequest(name=created.name), metadata=tenant_a
    )
    assert fetched == current


@pytest.mark.parametrize(
    ("session_fields", "paths", "field"),
    [
        ({}, ["title"], "update_mask"),
        ({}, ["display_name", "message_count"], "update_mask"),
        ({"etag": "not-an-etag"}, ["display_name"], "session.etag"),
        ({"labels": {"Bad": "x"}}, ["labels"], 'session.labels["Bad"]'),
        ({"display_name": "n" * 257}, ["display_name"], "session.display_name"),
        ({"metadata": struct(blob="x" * 65_536)}, ["metadata"], "session.metadata"),
        ({"name": "session/x"}, ["display_name"], "session.name"),
        ({"name": ""}, ["display_name"], "session.name"),
    ],
)
async def test_update_rejects_bad_masks_and_values(
    memory: Stub,
    tenant_a: Metadata,
    session_fields: dict[str, Any],
    paths: list[str],
    field: str,
) -> None:
    created = await create(memory, tenant_a, display_name="kept")
    session = memory_pb2.Session(**{"name": created.name, **session_fields})
    request = memory_pb2.UpdateSessionRequest(
        session=session, update_mask=field_mask_pb2.FieldMask(paths=paths)
    )
    await expect_invalid(memory.UpdateSession(request, metadata=tenant_a), field)
    fetched = await memory.GetSession(
        memory_pb2.GetSessionRequest(name=created.name), metadata=tenant_a
    )
    assert fetched == created


async def test_update_ignores_invalid_values_outside_the_mask(
    memory: Stub, tenant_a: Metadata
) -> None:
    created = await create(memory, tenant_a)
    updated = await memory.UpdateSession(
        memory_pb2.UpdateSessionRequest(
            session=memory_pb2.Session(name=created.name, display_name="ok", labels={"B": "x"}),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=tenant_a,
    )
    assert updated.display_name == "ok"


async def test_update_unknown_is_not_found(memory: Stub, tenant_a: Metadata) -> None:
    request = memory_pb2.UpdateSessionRequest(
        session=memory_pb2.Session(name="sessions/nope", display_name="x", etag='"1"')
    )
    await expect_error(memory.UpdateSession(request, metadata=tenant_a), grpc.StatusCode.NOT_FOUND)


# ------------------------------------------------------------------ delete


async def test_delete_without_purge_window_removes_messages_and_working_memory(
    hard_delete: Stub, tenant_a: Metadata, db: asyncpg.Pool, redis_client: redis.asyncio.Redis
) -> None:
    memory = hard_delete
    created = await create(memory, tenant_a)
    session_id = created.name.removeprefix("sessions/")
    await memory.AppendMessages(
        memory_pb2.AppendMessagesRequest(
            parent=created.name,
            messages=[
                memory_pb2.Message(role=common_pb2.ROLE_USER, parts=[common_pb2.Part(text="hi")])
            ],
        ),
        metadata=tenant_a,
    )
    value = struct_pb2.Value(string_value="v")
    await memory.UpdateWorkingMemory(
        memory_pb2.UpdateWorkingMemoryRequest(
            working_memory=memory_pb2.WorkingMemory(
                name=f"{created.name}/workingMemory", values={"k": value}
            )
        ),
        metadata=tenant_a,
    )
    key = f"agentmesh:wm:tenant-a:{session_id}"
    assert await redis_client.exists(key) == 1
    await memory.DeleteSession(
        memory_pb2.DeleteSessionRequest(name=created.name), metadata=tenant_a
    )
    assert await session_rows(db, session_id) == 0
    messages = await db.fetchval(
        "SELECT count(*) FROM memory.messages WHERE session_id = $1", session_id
    )
    assert messages == 0
    assert await redis_client.exists(key) == 0
    await expect_error(
        memory.GetSession(memory_pb2.GetSessionRequest(name=created.name), metadata=tenant_a),
        grpc.StatusCode.NOT_FOUND,
    )
    # Gone for good: there is nothing to undelete.
    await expect_error(
        memory.UndeleteSession(
            memory_pb2.UndeleteSessionRequest(name=created.name), metadata=tenant_a
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_delete_missing_is_not_found_unless_allowed(memory: Stub, tenant_a: Metadata) -> None:
    name = f"sessions/{unique()}"
    await expect_error(
        memory.DeleteSession(memory_pb2.DeleteSessionRequest(name=name), metadata=tenant_a),
        grpc.StatusCode.NOT_FOUND,
    )
    await memory.DeleteSession(
        memory_pb2.DeleteSessionRequest(name=name, allow_missing=True), metadata=tenant_a
    )


async def test_delete_checks_the_etag(memory: Stub, tenant_a: Metadata, db: asyncpg.Pool) -> None:
    created = await create(memory, tenant_a)
    await expect_error(
        memory.DeleteSession(
            memory_pb2.DeleteSessionRequest(name=created.name, etag='"999"'), metadata=tenant_a
        ),
        grpc.StatusCode.ABORTED,
    )
    await expect_error(
        memory.DeleteSession(
            memory_pb2.DeleteSessionRequest(name=created.name, etag='"999"', allow_missing=True),
            metadata=tenant_a,
        ),
        grpc.StatusCode.ABORTED,
    )
    assert await session_rows(db, created.name.removeprefix("sessions/")) == 1
    await expect_invalid(
        memory.DeleteSession(
            memory_pb2.DeleteSessionRequest(name=created.name, etag="garbage"), metadata=tenant_a
        ),
        "etag",
    )
    await memory.DeleteSession(
        memory_pb2.DeleteSessionRequest(name=created.name, etag=created.etag), metadata=tenant_a
    )
    deleted = await db.fetchval(
        "SELECT delete_time IS NOT NULL FROM memory.sessions WHERE tenant = $1 AND id = $2",
        "tenant-a",
        created.name.removeprefix("sessions/"),
    )
    assert deleted is True  # soft-deleted: kept until its purge time


async def test_an_etag_of_a_deleted_session_does_not_match_its_successor(
    hard_delete: Stub, tenant_a: Metadata
) -> None:
    """Deleted and created again, the id's version starts over: the old etag (same
    version number) must still be stale for the new session, not a match. (With soft
    delete the id is free again only once the session is purged: see the soft delete
    and janitor tests.)"""
    memory = hard_delete
    session_id = unique()
    old = await create(memory, tenant_a, session_id, display_name="old")
    await memory.DeleteSession(
        memory_pb2.DeleteSessionRequest(name=old.name, etag=old.etag), metadata=tenant_a
    )
    new = await create(memory, tenant_a, session_id, display_name="new")
    assert new.etag != old.etag
    stale_update = memory_pb2.UpdateSessionRequest(
        session=memory_pb2.Session(name=new.name, display_name="lost", etag=old.etag),
        update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
    )
    error = await expect_error(
        memory.UpdateSession(stale_update, metadata=tenant_a), grpc.StatusCode.ABORTED
    )
    assert "changed since the etag was read" in (error.details() or "")
    await expect_error(
        memory.DeleteSession(
            memory_pb2.DeleteSessionRequest(name=new.name, etag=old.etag), metadata=tenant_a
        ),
        grpc.StatusCode.ABORTED,
    )
    fetched = await memory.GetSession(
        memory_pb2.GetSessionRequest(name=new.name), metadata=tenant_a
    )
    assert fetched == new
    # The new session's own etag works.
    updated = await memory.UpdateSession(
        memory_pb2.UpdateSessionRequest(
            session=memory_pb2.Session(name=new.name, display_name="newer", etag=new.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=tenant_a,
    )
    assert updated.display_name == "newer"
    assert updated.etag not in (new.etag, old.etag)


async def test_an_etag_of_the_earlier_version_only_form_is_stale(
    memory: Stub, tenant_a: Metadata
) -> None:
    """Etags issued before incarnations (``"1"``) are the service's own, so not
    malformed; they can match no session any more, so they are a conflict."""
    created = await create(memory, tenant_a)
    for call in (
        memory.UpdateSession(
            memory_pb2.UpdateSessionRequest(
                session=memory_pb2.Session(name=created.name, display_name="x", etag='"1"'),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
            metadata=tenant_a,
        ),
        memory.DeleteSession(
            memory_pb2.DeleteSessionRequest(name=created.name, etag='"1"'), metadata=tenant_a
        ),
    ):
        await expect_error(call, grpc.StatusCode.ABORTED)


@pytest.mark.parametrize(
    "etag",
    [
        "garbage",
        '"1-not-hex"',
        '"1-' + "a" * 31 + '"',
        '"1-' + "A" * 32 + '"',
        '"-1"',
        '"99999999999999999999"',
        '"9223372036854775808-' + "a" * 32 + '"',
    ],
)
async def test_a_malformed_etag_is_invalid(memory: Stub, tenant_a: Metadata, etag: str) -> None:
    created = await create(memory, tenant_a)
    await expect_invalid(
        memory.UpdateSession(
            memory_pb2.UpdateSessionRequest(
                session=memory_pb2.Session(name=created.name, display_name="x", etag=etag),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
            metadata=tenant_a,
        ),
        "session.etag",
    )
    await expect_invalid(
        memory.DeleteSession(
            memory_pb2.DeleteSessionRequest(name=created.name, etag=etag), metadata=tenant_a
        ),
        "etag",
    )


@pytest.mark.parametrize("name", ["", "sessions/UPPER", "session/x"])
async def test_delete_with_a_malformed_name_is_invalid(
    memory: Stub, tenant_a: Metadata, name: str
) -> None:
    await expect_invalid(
        memory.DeleteSession(memory_pb2.DeleteSessionRequest(name=name), metadata=tenant_a),
        "name",
    )


async def test_delete_session_threads_removes_only_the_sessions_threads(
    db: asyncpg.Pool,
) -> None:
    """The checkpoint hook, on scratch tables shaped by the thread-id convention."""
    async with db.acquire() as conn, conn.transaction():
        for table in ("scratch_checkpoints", "scratch_writes"):
            await conn.execute(f"CREATE TEMP TABLE {table} (tenant text, thread_id text)")
            await conn.executemany(
                f"INSERT INTO {table} VALUES ($1, $2)",
                [
                    ("t", "s1"),
                    ("t", "s1:sub"),
                    ("t", "s1:sub:deeper"),
                    ("t", "s10"),
                    ("t", "s1-other"),
                    ("u", "s1"),
                ],
            )
        await delete_session_threads(
            conn,
            "t",
            "s1",
            tables=("pg_temp.scratch_writes", "pg_temp.scratch_checkpoints", "memory.absent"),
        )
        for table in ("scratch_checkpoints", "scratch_writes"):
            left = await conn.fetch(f"SELECT tenant, thread_id FROM {table} ORDER BY 1, 2")
            assert [tuple(row) for row in left] == [("t", "s1-other"), ("t", "s10"), ("u", "s1")]
        await conn.execute("DROP TABLE scratch_checkpoints, scratch_writes")


async def test_delete_without_purge_window_removes_the_sessions_checkpoints(
    hard_delete: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    """Wiring of the hook against the real checkpoint tables (owned by the checkpoints store);
    rows are written directly with only the columns the convention relies on."""
    memory = hard_delete
    created = await create(memory, tenant_a)
    session_id = created.name.removeprefix("sessions/")
    threads = [session_id, f"{session_id}:sub", f"{session_id}x"]
    await db.executemany(
        "INSERT INTO memory.checkpoints (tenant, thread_id, checkpoint_id, type, checkpoint)"
        " VALUES ($1, $2, 'c1', 'json', '')",
        [("tenant-a", t) for t in threads] + [("tenant-b", session_id)],
    )
    await memory.DeleteSession(
        memory_pb2.DeleteSessionRequest(name=created.name), metadata=tenant_a
    )
    left = await db.fetch(
        "SELECT tenant, thread_id FROM memory.checkpoints WHERE thread_id = ANY($1::text[])",
        threads,
    )
    assert sorted(tuple(row) for row in left) == [
        ("tenant-a", f"{session_id}x"),
        ("tenant-b", session_id),
    ]
    await db.execute("DELETE FROM memory.checkpoints WHERE thread_id = ANY($1::text[])", threads)


# ------------------------------------------------------------------ tenants


async def test_another_tenant_never_sees_or_changes_the_session(
    memory: Stub, tenant_a: Metadata, tenant_b: Metadata
) -> None:
    run = unique("run")
    session_id = unique()
    created = await create(memory, tenant_a, session_id, labels={"run": run})
    not_found = grpc.StatusCode.NOT_FOUND
    await expect_error(
        memory.GetSession(memory_pb2.GetSessionRequest(name=created.name), metadata=tenant_b),
        not_found,
    )
    assert await list_all(memory, tenant_b, f'labels.run = "{run}"', page_size=10) == []
    await expect_error(
        memory.UpdateSession(
            memory_pb2.UpdateSessionRequest(
                session=memory_pb2.Session(name=created.name, display_name="hijack")
            ),
            metadata=tenant_b,
        ),
        not_found,
    )
    await expect_error(
        memory.DeleteSession(memory_pb2.DeleteSessionRequest(name=created.name), metadata=tenant_b),
        not_found,
    )
    # Ids are per tenant: tenant-b may use the same id without touching tenant-a's.
    theirs = await create(memory, tenant_b, session_id, display_name="b's own")
    assert theirs.name == created.name
    fetched = await memory.GetSession(
        memory_pb2.GetSessionRequest(name=created.name), metadata=tenant_a
    )
    assert fetched == created


@pytest.mark.parametrize("session_id", ["trip\n", "trip\r\n", "trip "])
async def test_an_id_with_a_trailing_newline_is_refused_and_creates_nothing(
    memory: Stub, tenant_a: Metadata, session_id: str
) -> None:
    await expect_invalid(
        memory.CreateSession(
            memory_pb2.CreateSessionRequest(session_id=session_id), metadata=tenant_a
        ),
        "session_id",
    )
    await expect_invalid(
        memory.GetSession(
            memory_pb2.GetSessionRequest(name=f"sessions/{session_id}"), metadata=tenant_a
        ),
        "name",
    )
