"""MemoryService working memory over real gRPC, against the real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest
import redis.asyncio
from google.protobuf import duration_pb2, json_format, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agentmesh.core.server import RunningServer, start_server
from agentmesh.memory.app import build_memory
from agentmesh.v1 import memory_pb2, memory_pb2_grpc

# `component.conftest`, not `conftest`: the name mypy resolves too (mypy_path has tests/).
from component.conftest import Backends, Metadata, memory_settings
from component.memory_helpers import (
    HARD_DELETE,
    Stub,
    expect_error,
    expect_invalid,
    rpc_error,
    serve_memory,
    unique,
)

DEFAULT_TTL_S = 86_400  # memory_working_ttl_s of the component settings


# ------------------------------------------------------------------ helpers


def value(python: Any) -> struct_pb2.Value:
    return json_format.ParseDict(python, struct_pb2.Value())


def plain(working: memory_pb2.WorkingMemory) -> dict[str, Any]:
    return {key: json_format.MessageToDict(v) for key, v in working.values.items()}


async def new_session(memory: Stub, auth: Metadata, session_id: str | None = None) -> str:
    session = await memory.CreateSession(
        memory_pb2.CreateSessionRequest(
            session=memory_pb2.Session(), session_id=session_id or unique("w")
        ),
        metadata=auth,
    )
    return f"{session.name}/workingMemory"


async def get(memory: Stub, auth: Metadata, name: str) -> memory_pb2.WorkingMemory:
    return await memory.GetWorkingMemory(
        memory_pb2.GetWorkingMemoryRequest(name=name), metadata=auth
    )


async def update(
    memory: Stub,
    auth: Metadata,
    name: str,
    values: dict[str, Any] | None = None,
    remove: list[str] | None = None,
    ttl_s: int | None = None,
) -> memory_pb2.WorkingMemory:
    request = memory_pb2.UpdateWorkingMemoryRequest(
        working_memory=memory_pb2.WorkingMemory(
            name=name, values={k: value(v) for k, v in (values or {}).items()}
        ),
        remove_keys=remove or [],
    )
    if ttl_s is not None:
        request.ttl.CopyFrom(duration_pb2.Duration(seconds=ttl_s))
    return await memory.UpdateWorkingMemory(request, metadata=auth)


def redis_key(tenant: str, name: str) -> str:
    session_id = name.removeprefix("sessions/").removesuffix("/workingMemory")
    return f"agentmesh:wm:{tenant}:{session_id}"


# ------------------------------------------------------------------ happy paths


async def test_a_new_session_has_empty_working_memory(memory: Stub, tenant_a: Metadata) -> None:
    name = await new_session(memory, tenant_a)
    working = await get(memory, tenant_a, name)
    assert working.name == name
    assert not working.values
    assert not working.HasField("expire_time")
    assert not working.HasField("update_time")


async def test_update_merges_removes_and_round_trips_json(
    memory: Stub, tenant_a: Metadata, redis_client: redis.asyncio.Redis
) -> None:
    name = await new_session(memory, tenant_a)
    first = await update(
        memory,
        tenant_a,
        name,
        {
            "plan": {"steps": ["search", "answer"], "done": False},
            "count": 3,
            "note": "hi",
            "nothing": None,
            "tags": ["a", 1, True],
        },
    )
    assert plain(first) == {
        "plan": {"steps": ["search", "answer"], "done": False},
        "count": 3.0,
        "note": "hi",
        "nothing": None,
        "tags": ["a", 1.0, True],
    }
    second = await update(
        memory, tenant_a, name, {"count": 4, "user.locale:v1": "fr-FR"}, remove=["note", "absent"]
    )
    assert plain(second) == {
        "plan": {"steps": ["search", "answer"], "done": False},
        "count": 4.0,
        "nothing": None,
        "tags": ["a", 1.0, True],
        "user.locale:v1": "fr-FR",
    }
    assert second.update_time.ToMicroseconds() > first.update_time.ToMicroseconds()
    fetched = await get(memory, tenant_a, name)
    assert (fetched.name, fetched.values, fetched.update_time) == (
        name,
        second.values,
        second.update_time,
    )
    # Reserved bookkeeping fields exist in Redis but never reach clients.
    fields = cast(list[bytes], await redis_client.hkeys(redis_key("tenant-a", name)))
    assert {f.decode() for f in fields} >= {"@update_time", "@session"}
    # A key both set and removed in one call ends up removed.
    third = await update(memory, tenant_a, name, {"tmp": 1}, remove=["tmp"])
    assert "tmp" not in third.values


async def test_the_ttl_is_set_and_refreshed(
    memory: Stub, tenant_a: Metadata, redis_client: redis.asyncio.Redis
) -> None:
    name = await new_session(memory, tenant_a)
    key = redis_key("tenant-a", name)
    before = time.time()
    short = await update(memory, tenant_a, name, {"k": 1}, ttl_s=60)
    assert 0 < await redis_client.pttl(key) <= 60_000
    assert before + 59 <= short.expire_time.ToMicroseconds() / 1e6 <= time.time() + 61
    fetched = await get(memory, tenant_a, name)
    assert abs(fetched.expire_time.ToMilliseconds() - short.expire_time.ToMilliseconds()) < 2_000
    # Without a ttl the server default applies again.
    default = await update(memory, tenant_a, name, {"k": 2})
    assert await redis_client.pttl(key) > 60_000
    assert default.expire_time.ToMicroseconds() / 1e6 >= before + DEFAULT_TTL_S - 5


async def test_expired_working_memory_reads_as_empty(
    memory: Stub, tenant_a: Metadata, redis_client: redis.asyncio.Redis
) -> None:
    name = await new_session(memory, tenant_a)
    await update(memory, tenant_a, name, {"k": 1}, ttl_s=1)
    await redis_client.pexpire(redis_key("tenant-a", name), 1)
    await asyncio.sleep(0.05)
    assert not (await get(memory, tenant_a, name)).values


async def test_concurrent_updates_of_distinct_keys_all_land(
    memory: Stub, tenant_a: Metadata
) -> None:
    name = await new_session(memory, tenant_a)
    await asyncio.gather(*(update(memory, tenant_a, name, {f"k{i}": i}) for i in range(20)))
    assert plain(await get(memory, tenant_a, name)) == {f"k{i}": float(i) for i in range(20)}


async def test_a_recreated_session_does_not_inherit_stale_working_memory(
    backends: Backends, tenant_a: Metadata, redis_client: redis.asyncio.Redis
) -> None:
    """An update racing a DeleteSession can leave a hash behind; the next session of
    the same id must not see it. (A server without a purge window, so the id is free
    again at once; after a purge by the janitor the same holds.)"""
    async with serve_memory(backends, **HARD_DELETE) as memory:
        session_id = unique("w")
        name = await new_session(memory, tenant_a, session_id)
        await update(memory, tenant_a, name, {"secret": "old"})
        key = redis_key("tenant-a", name)
        stale: dict[Any, Any] = await redis_client.hgetall(key)
        await memory.DeleteSession(
            memory_pb2.DeleteSessionRequest(name=f"sessions/{session_id}"), metadata=tenant_a
        )
        assert await redis_client.exists(key) == 0
        await redis_client.hset(key, mapping=stale)  # the racing update's late write
        await new_session(memory, tenant_a, session_id)
        assert not (await get(memory, tenant_a, name)).values
        fresh = await update(memory, tenant_a, name, {"new": 1})
        assert plain(fresh) == {"new": 1.0}


async def test_a_deleted_sessions_working_memory_is_not_found_and_undelete_restores_it(
    memory: Stub, tenant_a: Metadata, redis_client: redis.asyncio.Redis
) -> None:
    """Soft delete keeps the hash (with its TTL running) so an undelete gives it back;
    meanwhile reads and writes are NOT_FOUND and change nothing."""
    session_id = unique("w")
    name = await new_session(memory, tenant_a, session_id)
    await update(memory, tenant_a, name, {"step": "pay"}, ttl_s=600)
    key = redis_key("tenant-a", name)
    session = f"sessions/{session_id}"
    await memory.DeleteSession(memory_pb2.DeleteSessionRequest(name=session), metadata=tenant_a)
    assert await redis_client.exists(key) == 1
    await expect_error(get(memory, tenant_a, name), grpc.StatusCode.NOT_FOUND)
    await expect_error(update(memory, tenant_a, name, {"step": "x"}), grpc.StatusCode.NOT_FOUND)
    assert 0 < await redis_client.pttl(key) <= 600_000  # its own TTL, untouched
    await memory.UndeleteSession(memory_pb2.UndeleteSessionRequest(name=session), metadata=tenant_a)
    assert plain(await get(memory, tenant_a, name)) == {"step": "pay"}


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "name", ["", "sessions/x", "sessions/UPPER/workingMemory", "session/x/workingMemory"]
)
async def test_malformed_names_are_invalid(memory: Stub, tenant_a: Metadata, name: str) -> None:
    await expect_invalid(
        memory.GetWorkingMemory(memory_pb2.GetWorkingMemoryRequest(name=name), metadata=tenant_a),
        "name",
    )
    await expect_invalid(update(memory, tenant_a, name, {"k": 1}), "working_memory.name")


@pytest.mark.parametrize(
    ("values", "remove", "ttl_s", "field"),
    [
        ({"bad key": 1}, [], None, 'working_memory.values["bad key"]'),
        ({"@update_time": 1}, [], None, 'working_memory.values["@update_time"]'),
        ({"k" * 129: 1}, [], None, f'working_memory.values["{"k" * 129}"]'),
        ({"big": "x" * 65_536}, [], None, 'working_memory.values["big"]'),
        ({"nan": float("nan")}, [], None, 'working_memory.values["nan"]'),
        ({}, ["ok", "@session"], None, "remove_keys[1]"),
        ({}, [""], None, "remove_keys[0]"),
        ({"k": 1}, [], 0, "ttl"),
        ({"k": 1}, [], -5, "ttl"),
        ({"k": 1}, [], 30 * 86_400 + 1, "ttl"),
    ],
)
async def test_bad_updates_are_invalid_and_write_nothing(
    memory: Stub,
    tenant_a: Metadata,
    redis_client: redis.asyncio.Redis,
    values: dict[str, Any],
    remove: list[str],
    ttl_s: int | None,
    field: str,
) -> None:
    name = await new_session(memory, tenant_a)
    await expect_invalid(update(memory, tenant_a, name, {"ok": 1, **values}, remove, ttl_s), field)
    assert await redis_client.exists(redis_key("tenant-a", name)) == 0


async def test_an_unknown_session_is_not_found(
    memory: Stub, tenant_a: Metadata, redis_client: redis.asyncio.Redis
) -> None:
    name = f"sessions/unknown-{uuid.uuid4().hex[:8]}/workingMemory"
    await expect_error(get(memory, tenant_a, name), grpc.StatusCode.NOT_FOUND)
    await expect_error(update(memory, tenant_a, name, {"k": 1}), grpc.StatusCode.NOT_FOUND)
    assert await redis_client.exists(redis_key("tenant-a", name)) == 0


async def test_another_tenant_cannot_read_or_write(
    memory: Stub, tenant_a: Metadata, tenant_b: Metadata, redis_client: redis.asyncio.Redis
) -> None:
    name = await new_session(memory, tenant_a)
    await update(memory, tenant_a, name, {"secret": "a's"})
    await expect_error(get(memory, tenant_b, name), grpc.StatusCode.NOT_FOUND)
    await expect_error(
        update(memory, tenant_b, name, {"secret": "b's"}, remove=["secret"]),
        grpc.StatusCode.NOT_FOUND,
    )
    assert await redis_client.exists(redis_key("tenant-b", name)) == 0
    assert plain(await get(memory, tenant_a, name)) == {"secret": "a's"}


# ------------------------------------------------------------------ limits

MAX_KEYS = 3
MAX_BYTES = 100


@pytest.fixture(scope="module")
async def small(backends: Backends) -> AsyncIterator[Stub]:
    """A second Memory server, on the same backends, whose working memories hold at most
    3 keys and 100 bytes (keys plus JSON values)."""
    settings = memory_settings(
        backends,
        AGENTMESH_MEMORY_WORKING_MAX_KEYS=str(MAX_KEYS),
        AGENTMESH_MEMORY_WORKING_MAX_BYTES=str(MAX_BYTES),
    )
    running: RunningServer = await start_server(settings.settings, await build_memory(*settings))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield cast("Stub", memory_pb2_grpc.MemoryServiceStub(channel))
    finally:
        await running.stop(0)


def quota_status(error: grpc.aio.AioRpcError) -> tuple[Any, list[Any]]:
    """The ErrorInfo and the QuotaFailure violations of a RESOURCE_EXHAUSTED error;
    asserts that it carries no RetryInfo (retrying the same update cannot help)."""
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    status = rpc_status.from_call(cast(grpc.Call, error))
    assert status is not None
    info, quota = error_details_pb2.ErrorInfo(), error_details_pb2.QuotaFailure()
    assert any(detail.Unpack(info) for detail in status.details)
    assert any(detail.Unpack(quota) for detail in status.details)
    assert not any(detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for detail in status.details)
    return info, list(quota.violations)


async def test_an_update_over_the_key_limit_changes_nothing(
    small: Stub, tenant_a: Metadata, redis_client: redis.asyncio.Redis
) -> None:
    name = await new_session(small, tenant_a)
    full = await update(small, tenant_a, name, {"a": 1, "b": 2, "c": 3}, ttl_s=60)
    refused = await rpc_error(update(small, tenant_a, name, {"d": 4}, ttl_s=3600))
    info, (violation,) = quota_status(refused)
    assert info.reason == "WORKING_MEMORY_LIMIT_EXCEEDED"
    assert dict(info.metadata) == {
        "resource_name": name,
        "limit_name": "keys",
        "limit": "3",
        "projected": "4",
    }
    assert violation.subject == name
    assert violation.quota_id == "WorkingMemoryKeysPerSession"
    assert violation.quota_value == MAX_KEYS
    assert dict(violation.quota_dimensions) == {"working_memory": name}
    # Nothing changed: not the values, not the TTL, not the update time.
    after = await get(small, tenant_a, name)
    assert (after.values, after.update_time) == (full.values, full.update_time)
    assert await redis_client.pttl(redis_key("tenant-a", name)) <= 60_000

    # At the limit, replacing a key, and swapping one key for another, still fit.
    assert plain(await update(small, tenant_a, name, {"a": 10})) == {"a": 10, "b": 2, "c": 3}
    swapped = await update(small, tenant_a, name, {"d": 4}, remove=["a"])
    assert plain(swapped) == {"b": 2, "c": 3, "d": 4}


async def test_an_update_over_the_size_limit_changes_nothing(
    small: Stub, tenant_a: Metadata
) -> None:
    name = await new_session(small, tenant_a)
    first = await update(small, tenant_a, name, {"k1": "x" * 40})  # 2 + 42 bytes
    refused = await rpc_error(update(small, tenant_a, name, {"k2": "y" * 60}))  # + 2 + 62
    info, (violation,) = quota_status(refused)
    assert (info.metadata["limit_name"], info.metadata["projected"]) == ("bytes", "108")
    assert (violation.quota_id, violation.quota_value) == ("WorkingMemoryBytesPerSession", 100)
    assert (await get(small, tenant_a, name)).values == first.values
    # A smaller value for the same key makes room.
    await update(small, tenant_a, name, {"k1": "x"})
    assert plain(await update(small, tenant_a, name, {"k2": "y" * 60})) == {
        "k1": "x",
        "k2": "y" * 60,
    }


@pytest.mark.parametrize(
    "values", [{"a": 1, "b": 2, "c": 3, "d": 4}, {"big": "x" * 100}], ids=["keys", "bytes"]
)
async def test_a_request_over_a_limit_by_itself_is_invalid(
    small: Stub, tenant_a: Metadata, redis_client: redis.asyncio.Redis, values: dict[str, Any]
) -> None:
    """No working memory could take it, whatever it holds: the request is at fault."""
    name = await new_session(small, tenant_a)
    await expect_invalid(update(small, tenant_a, name, values), "working_memory.values")
    assert await redis_client.exists(redis_key("tenant-a", name)) == 0


async def test_keys_set_and_removed_in_one_request_do_not_count(
    small: Stub, tenant_a: Metadata
) -> None:
    name = await new_session(small, tenant_a)
    values = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}
    fits = await update(small, tenant_a, name, values, remove=["a", "b"])
    assert plain(fits) == {"c": 3, "d": 4, "e": 5}


async def test_removing_keys_works_even_over_a_lowered_limit(
    memory: Stub, small: Stub, tenant_a: Metadata
) -> None:
    """Data stored under higher limits stays usable: an update that does not grow an
    over-limit working memory passes, one that grows it does not."""
    name = await new_session(memory, tenant_a)
    await update(memory, tenant_a, name, {f"k{i}": i for i in range(6)})
    await expect_error(
        update(small, tenant_a, name, {"new": 1}), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    shrunk = await update(small, tenant_a, name, {"k0": 0.5}, remove=["k1"])
    assert plain(shrunk) == {"k0": 0.5, "k2": 2, "k3": 3, "k4": 4, "k5": 5}


async def test_concurrent_updates_never_overshoot_the_limit(
    small: Stub, tenant_a: Metadata
) -> None:
    """The check and the write are one script: of ten racing single-key updates, exactly
    as many land as there is room for."""
    name = await new_session(small, tenant_a)
    outcomes = await asyncio.gather(
        *(update(small, tenant_a, name, {f"k{i}": i}) for i in range(10)),
        return_exceptions=True,
    )
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(refused) == 10 - MAX_KEYS
    assert all(o.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for o in refused)
    assert len((await get(small, tenant_a, name)).values) == MAX_KEYS
