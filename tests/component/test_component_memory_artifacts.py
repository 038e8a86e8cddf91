"""Versioned artifacts over real gRPC: put, get, list, versions, delete, limits."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest
from google.protobuf import struct_pb2

from agentmesh.v1 import memory_pb2

# `component.conftest`, not `conftest`: the name mypy resolves too (mypy_path has tests/).
from component.conftest import Backends, Metadata
from component.memory_helpers import Stub, field_violations, rpc_error, serve_memory, uid

pytestmark = pytest.mark.component

SMALL_LIMIT = 1024


def _name() -> str:
    return f"artifacts/a-{uid(10)}"


async def _put(
    stub: Stub, md: Metadata, name: str, request_id: str = "", **fields: Any
) -> memory_pb2.Artifact:
    fields.setdefault("media_type", "text/markdown")
    if "data" not in fields:
        fields.setdefault("text", "# hello")
    artifact = memory_pb2.Artifact(name=name, **fields)
    return await stub.PutArtifact(
        memory_pb2.PutArtifactRequest(artifact=artifact, request_id=request_id), metadata=md
    )


async def _get(stub: Stub, md: Metadata, name: str, version: int = 0) -> memory_pb2.Artifact:
    return await stub.GetArtifact(
        memory_pb2.GetArtifactRequest(name=name, version=version), metadata=md
    )


async def _versions_in_db(db: asyncpg.Pool, tenant: str, name: str) -> list[int]:
    rows = await db.fetch(
        "SELECT version FROM memory.artifact_versions"
        " WHERE tenant = $1 AND artifact_id = $2 ORDER BY version",
        tenant,
        name.split("/", 1)[1],
    )
    return [row["version"] for row in rows]


async def _heads_in_db(db: asyncpg.Pool, tenant: str, name: str) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM memory.artifacts WHERE tenant = $1 AND id = $2",
        tenant,
        name.split("/", 1)[1],
    )
    return count


async def _list_all(stub: Stub, md: Metadata, filter_: str, size: int) -> list[memory_pb2.Artifact]:
    found: list[memory_pb2.Artifact] = []
    token = ""
    for _ in range(100):
        page = await stub.ListArtifacts(
            memory_pb2.ListArtifactsRequest(page_size=size, page_token=token, filter=filter_),
            metadata=md,
        )
        assert len(page.artifacts) <= size
        found.extend(page.artifacts)
        token = page.next_page_token
        if not token:
            return found
    raise AssertionError("pagination did not end")


async def _all_versions(stub: Stub, md: Metadata, name: str, size: int) -> list[int]:
    versions: list[int] = []
    token = ""
    for _ in range(100):
        page = await stub.ListArtifactVersions(
            memory_pb2.ListArtifactVersionsRequest(name=name, page_size=size, page_token=token),
            metadata=md,
        )
        assert all(a.WhichOneof("content") is None for a in page.artifacts)
        versions.extend(a.version for a in page.artifacts)
        token = page.next_page_token
        if not token:
            return versions
    raise AssertionError("pagination did not end")


async def test_puts_make_versions_and_get_reads_any(memory: Stub, tenant_a: Metadata) -> None:
    name = _name()
    metadata = struct_pb2.Struct()
    metadata.update({"author": "planner"})
    first = await _put(memory, tenant_a, name, text="v1", metadata=metadata, session="sessions/s1")
    second = await _put(memory, tenant_a, name, media_type="Application/PDF", data=b"\x00\x01v2")
    third = await _put(memory, tenant_a, name, text="v3 ünïcode")

    assert [first.version, second.version, third.version] == [1, 2, 3]
    assert first.session == "sessions/s1"
    assert first.metadata == metadata
    assert second.media_type == "application/pdf"  # media types are case-insensitive
    assert third.size_bytes == len("v3 ünïcode".encode())
    assert third.sha256 == hashlib.sha256("v3 ünïcode".encode()).hexdigest()
    assert len({first.etag, second.etag, third.etag}) == 3

    assert await _get(memory, tenant_a, name) == third
    assert await _get(memory, tenant_a, name, version=1) == first
    got_second = await _get(memory, tenant_a, name, version=2)
    assert got_second == second
    assert got_second.data == b"\x00\x01v2"
    assert got_second.WhichOneof("content") == "data"
    assert second.sha256 == hashlib.sha256(b"\x00\x01v2").hexdigest()

    assert await _all_versions(memory, tenant_a, name, size=2) == [3, 2, 1]


async def test_empty_text_is_content(memory: Stub, tenant_a: Metadata) -> None:
    stored = await _put(memory, tenant_a, _name(), text="")
    assert stored.WhichOneof("content") == "text"
    assert stored.size_bytes == 0


async def test_etag_guards_against_lost_updates(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    name = _name()
    first = await _put(memory, tenant_a, name, text="v1")
    second = await _put(memory, tenant_a, name, text="v2", etag=first.etag)
    assert second.version == 2

    stale = await rpc_error(_put(memory, tenant_a, name, text="lost", etag=first.etag))
    assert stale.code() == grpc.StatusCode.ABORTED
    forged = await rpc_error(_put(memory, tenant_a, name, text="lost", etag='"2"'))
    assert forged.code() == grpc.StatusCode.ABORTED
    assert await _versions_in_db(db, "tenant-a", name) == [1, 2]
    assert (await _get(memory, tenant_a, name)).text == "v2"

    # An etag for an artifact that does not exist yet cannot match anything.
    fresh = _name()
    missing = await rpc_error(_put(memory, tenant_a, fresh, etag=first.etag))
    assert missing.code() == grpc.StatusCode.ABORTED
    assert await _heads_in_db(db, "tenant-a", fresh) == 0


async def test_concurrent_puts_get_consecutive_versions(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    name = _name()
    results = await asyncio.gather(
        *(_put(memory, tenant_a, name, text=f"writer {i}") for i in range(20))
    )
    assert sorted(r.version for r in results) == list(range(1, 21))
    assert await _versions_in_db(db, "tenant-a", name) == list(range(1, 21))
    assert (await _get(memory, tenant_a, name)).version == 20
    head = await db.fetchval(
        "SELECT latest_version FROM memory.artifacts WHERE tenant = 'tenant-a' AND id = $1",
        name.split("/", 1)[1],
    )
    assert head == 20


async def test_request_id_makes_put_idempotent(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    name = _name()
    request_id = str(uuid.uuid4())
    first = await _put(memory, tenant_a, name, request_id=request_id, text="once")
    again = await _put(memory, tenant_a, name, request_id=request_id, text="once")
    assert again == first
    racing = await asyncio.gather(
        *(_put(memory, tenant_a, name, request_id=request_id, text="once") for _ in range(5))
    )
    assert all(r == first for r in racing)
    assert await _versions_in_db(db, "tenant-a", name) == [1]
    other = await _put(memory, tenant_a, name, request_id=str(uuid.uuid4()), text="twice")
    assert other.version == 2
    # The key of the first put, on different content: refused, not answered with v1.
    reused = await rpc_error(_put(memory, tenant_a, name, request_id=request_id, text="thrice"))
    assert reused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "already used for a different request" in (reused.details() or "")
    assert await _versions_in_db(db, "tenant-a", name) == [1, 2]


@pytest.fixture(scope="module")
async def small_memory(backends: Backends) -> AsyncIterator[Stub]:
    """A second Memory server whose artifact limit is 1 KiB."""
    async with serve_memory(backends, AGENTMESH_MEMORY_ARTIFACT_MAX_BYTES=str(SMALL_LIMIT)) as stub:
        yield stub


@pytest.mark.parametrize("kind", ["text", "data"])
async def test_content_over_the_limit_is_invalid_and_writes_nothing(
    small_memory: Stub, tenant_a: Metadata, db: asyncpg.Pool, kind: str
) -> None:
    name = _name()
    at_limit: dict[str, Any] = (
        {"text": "é" * (SMALL_LIMIT // 2)} if kind == "text" else {"data": b"x" * SMALL_LIMIT}
    )
    assert (await _put(small_memory, tenant_a, name, **at_limit)).size_bytes == SMALL_LIMIT

    over: dict[str, Any] = (
        {"text": "é" * (SMALL_LIMIT // 2) + "x"}  # the limit counts UTF-8 bytes
        if kind == "text"
        else {"data": b"x" * (SMALL_LIMIT + 1)}
    )
    violations = await field_violations(
        _put(small_memory, tenant_a, name, request_id=str(uuid.uuid4()), **over)
    )
    assert str(SMALL_LIMIT) in violations[f"artifact.{kind}"]
    assert await _versions_in_db(db, "tenant-a", name) == [1]


async def test_default_limit_is_two_mib(memory: Stub, tenant_a: Metadata, db: asyncpg.Pool) -> None:
    name = _name()
    violations = await field_violations(
        _put(memory, tenant_a, name, data=b"x" * (2 * 1024 * 1024 + 1))
    )
    assert str(2 * 1024 * 1024) in violations["artifact.data"]
    assert await _heads_in_db(db, "tenant-a", name) == 0


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": ""}, "artifact.name"),
        ({"name": "artifacts/Upper"}, "artifact.name"),
        ({"name": "documents/x"}, "artifact.name"),
        ({"name": "artifacts/" + "a" * 64}, "artifact.name"),
        ({"media_type": ""}, "artifact.media_type"),
        ({"media_type": "text"}, "artifact.media_type"),
        ({"media_type": "text/"}, "artifact.media_type"),
        ({"media_type": "text/plain; charset=utf-8"}, "artifact.media_type"),
        ({"media_type": "te xt/plain"}, "artifact.media_type"),
        ({"session": "sessions/Bad"}, "artifact.session"),
        ({"text": "nul\x00"}, "artifact.text"),
        ({"no_content": True}, "artifact.content"),
    ],
)
async def test_bad_puts_are_invalid_argument_and_write_nothing(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool, fields: dict[str, Any], field: str
) -> None:
    values: dict[str, Any] = {"name": _name(), "media_type": "text/plain", "text": "ok", **fields}
    if values.pop("no_content", False):
        del values["text"]
    request = memory_pb2.PutArtifactRequest(
        artifact=memory_pb2.Artifact(**values), request_id=str(uuid.uuid4())
    )
    violations = await field_violations(memory.PutArtifact(request, metadata=tenant_a))
    assert field in violations, violations
    if values["name"].startswith("artifacts/"):
        assert await _heads_in_db(db, "tenant-a", values["name"]) == 0


async def test_oversize_metadata_is_invalid(memory: Stub, tenant_a: Metadata) -> None:
    metadata = struct_pb2.Struct()
    metadata.update({"blob": "x" * (16 * 1024)})
    violations = await field_violations(_put(memory, tenant_a, _name(), metadata=metadata))
    assert "artifact.metadata" in violations


async def test_unknown_artifacts_and_versions_are_not_found(
    memory: Stub, tenant_a: Metadata
) -> None:
    unknown = _name()
    for call in (
        _get(memory, tenant_a, unknown),
        _get(memory, tenant_a, unknown, version=1),
        memory.ListArtifactVersions(
            memory_pb2.ListArtifactVersionsRequest(name=unknown), metadata=tenant_a
        ),
        memory.DeleteArtifact(memory_pb2.DeleteArtifactRequest(name=unknown), metadata=tenant_a),
    ):
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert unknown in (error.details() or "")

    name = _name()
    await _put(memory, tenant_a, name)
    error = await rpc_error(_get(memory, tenant_a, name, version=7))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert f"{name}@7" in (error.details() or "")


async def test_bad_reads_are_invalid_argument(memory: Stub, tenant_a: Metadata) -> None:
    assert "version" in await field_violations(_get(memory, tenant_a, _name(), version=-1))
    for name in ("", "artifacts/", "artifacts/A", "sessions/x"):
        assert "name" in await field_violations(_get(memory, tenant_a, name))
        assert "name" in await field_violations(
            memory.ListArtifactVersions(
                memory_pb2.ListArtifactVersionsRequest(name=name), metadata=tenant_a
            )
        )
        assert "name" in await field_violations(
            memory.DeleteArtifact(memory_pb2.DeleteArtifactRequest(name=name), metadata=tenant_a)
        )


async def test_delete_removes_every_version(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    name = _name()
    for _ in range(3):
        await _put(memory, tenant_a, name)
    await memory.DeleteArtifact(memory_pb2.DeleteArtifactRequest(name=name), metadata=tenant_a)
    assert await _versions_in_db(db, "tenant-a", name) == []
    assert (await rpc_error(_get(memory, tenant_a, name))).code() == grpc.StatusCode.NOT_FOUND

    again = memory_pb2.DeleteArtifactRequest(name=name, allow_missing=True)
    await memory.DeleteArtifact(again, metadata=tenant_a)
    assert (await _put(memory, tenant_a, name)).version == 1  # a new artifact


async def test_list_shows_latest_versions_by_name_with_filters(
    memory: Stub, tenant_a: Metadata
) -> None:
    session = f"sessions/s-{uid(10)}"
    names = sorted(_name() for _ in range(5))
    for index, name in enumerate(names):
        await _put(memory, tenant_a, name, text="old", session=session)
        kind = "text/markdown" if index % 2 == 0 else "application/json"
        await _put(memory, tenant_a, name, media_type=kind, text="new", session=session)
    # Moved out of the session by its latest version: listed by its new session only.
    await _put(memory, tenant_a, names[4], text="moved")

    listed = await _list_all(memory, tenant_a, f'session = "{session}"', size=2)
    assert [a.name for a in listed] == names[:4]
    assert all(a.version == 2 and a.WhichOneof("content") is None for a in listed)
    assert all(a.size_bytes == 3 and a.sha256 for a in listed)

    markdown = await _list_all(
        memory, tenant_a, f'session = "{session}" AND media_type = "TEXT/Markdown"', size=1
    )
    assert [a.name for a in markdown] == [names[0], names[2]]


@pytest.mark.parametrize(
    "filter_",
    [
        'session = "s1"',
        'media_type = "markdown"',
        'media_type != "text/plain"',
        'name = "artifacts/x"',
        "session",
    ],
)
async def test_bad_list_filters_are_invalid_argument(
    memory: Stub, tenant_a: Metadata, filter_: str
) -> None:
    request = memory_pb2.ListArtifactsRequest(filter=filter_)
    assert "filter" in await field_violations(memory.ListArtifacts(request, metadata=tenant_a))


async def test_page_tokens_are_bound_and_checked(memory: Stub, tenant_a: Metadata) -> None:
    session = f"sessions/s-{uid(10)}"
    name = _name()
    for _ in range(2):
        await _put(memory, tenant_a, _name(), session=session)
        await _put(memory, tenant_a, name)
    page = await memory.ListArtifacts(
        memory_pb2.ListArtifactsRequest(page_size=1, filter=f'session = "{session}"'),
        metadata=tenant_a,
    )
    assert page.next_page_token
    for token, filter_ in ((page.next_page_token, 'media_type = "text/plain"'), ("bogus", "")):
        request = memory_pb2.ListArtifactsRequest(page_token=token, filter=filter_)
        assert "page_token" in await field_violations(
            memory.ListArtifacts(request, metadata=tenant_a)
        )

    versions = await memory.ListArtifactVersions(
        memory_pb2.ListArtifactVersionsRequest(name=name, page_size=1), metadata=tenant_a
    )
    assert versions.next_page_token
    for token, other in ((versions.next_page_token, _name()), (page.next_page_token, name)):
        versions_request = memory_pb2.ListArtifactVersionsRequest(name=other, page_token=token)
        assert "page_token" in await field_violations(
            memory.ListArtifactVersions(versions_request, metadata=tenant_a)
        )


async def test_other_tenants_never_see_artifacts(
    memory: Stub, tenant_a: Metadata, tenant_b: Metadata, db: asyncpg.Pool
) -> None:
    session = f"sessions/s-{uid(10)}"
    name = _name()
    await _put(memory, tenant_a, name, text="a1", session=session)
    await _put(memory, tenant_a, name, text="a2", session=session)

    assert (await rpc_error(_get(memory, tenant_b, name))).code() == grpc.StatusCode.NOT_FOUND
    assert (await rpc_error(_get(memory, tenant_b, name, 1))).code() == grpc.StatusCode.NOT_FOUND
    assert await _list_all(memory, tenant_b, f'session = "{session}"', size=10) == []
    versions = await rpc_error(
        memory.ListArtifactVersions(
            memory_pb2.ListArtifactVersionsRequest(name=name), metadata=tenant_b
        )
    )
    assert versions.code() == grpc.StatusCode.NOT_FOUND
    deleted = await rpc_error(
        memory.DeleteArtifact(memory_pb2.DeleteArtifactRequest(name=name), metadata=tenant_b)
    )
    assert deleted.code() == grpc.StatusCode.NOT_FOUND

    # The same id is a different artifact for tenant-b, starting at version 1; an
    # etag of tenant-a's artifact means nothing there.
    a_latest = await _get(memory, tenant_a, name)
    mixed = await rpc_error(_put(memory, tenant_b, name, text="b?", etag=a_latest.etag))
    assert mixed.code() == grpc.StatusCode.ABORTED
    own = await _put(memory, tenant_b, name, text="b1", session=session)
    assert own.version == 1
    assert [a.text for a in [await _get(memory, tenant_b, name)]] == ["b1"]
    assert (await _get(memory, tenant_a, name)).text == "a2"
    assert await _versions_in_db(db, "tenant-a", name) == [1, 2]
    assert await _versions_in_db(db, "tenant-b", name) == [1]

    await memory.DeleteArtifact(memory_pb2.DeleteArtifactRequest(name=name), metadata=tenant_b)
    assert (await _get(memory, tenant_a, name)).version == 2
