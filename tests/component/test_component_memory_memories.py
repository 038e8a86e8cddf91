"""MemoryService long-term memories over real gRPC: create (with near-duplicate
merging), batch create, get, list, update, delete and semantic search on pgvector.

The shared server uses the deterministic hash embedder: texts that share words
get close vectors. Every test files its memories under a fresh namespace, since
the database is shared by the whole session.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pgvector.asyncpg import register_vector

from agentmesh.core.auth import mint_token
from agentmesh.core.errors import ResourceExhausted
from agentmesh.core.server import start_server
from agentmesh.core.settings import ConfigError, Settings
from agentmesh.memory.app import build_memory
from agentmesh.memory.domain.merging import plan_merges
from agentmesh.memory.embedders import EmbedderUnavailable, build_embedder
from agentmesh.memory.settings import MemorySettings
from agentmesh.memory.stores.memory_index import (
    MIGRATE_COMMAND,
    check_hnsw_index,
    check_memory_store,
    ensure_hnsw_index,
)
from agentmesh.memory.stores.memory_search import SearchQuery, search_sql
from agentmesh.v1 import memory_pb2, memory_pb2_grpc

# `component.conftest`, not `conftest`: the name mypy resolves too (mypy_path has tests/).
from component.conftest import Metadata
from component.memory_helpers import Stub, expect_error, expect_invalid, struct, uid

DIM = 384


# ------------------------------------------------------------------ helpers


def fresh_namespace(*rest: str) -> str:
    return "/".join(("t" + uid(10), *rest))


def details_of(error: grpc.aio.AioRpcError, kind: Any) -> list[Any]:
    status = rpc_status.from_call(cast(grpc.Call, error))
    assert status is not None, "no google.rpc.Status details on the error"
    found = []
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            found.append(message)
    return found


def in_seconds(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.now(UTC) + timedelta(seconds=seconds))
    return stamp


def unit(*components: tuple[int, float]) -> list[float]:
    vector = [0.0] * DIM
    for index, value in components:
        vector[index] = value
    return vector


async def create(
    memory: Stub, auth: Metadata, namespace: str, content: str, **fields: Any
) -> memory_pb2.Memory:
    request_id = fields.pop("request_id", "")
    return await memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(
            memory=memory_pb2.Memory(namespace=namespace, content=content, **fields),
            request_id=request_id,
        ),
        metadata=auth,
    )


async def search(memory: Stub, auth: Metadata, **fields: Any) -> list[memory_pb2.ScoredMemory]:
    response = await memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(**fields), metadata=auth
    )
    return list(response.results)


async def listed(memory: Stub, auth: Metadata, filter_text: str) -> list[str]:
    response = await memory.ListMemories(
        memory_pb2.ListMemoriesRequest(filter=filter_text, page_size=1000), metadata=auth
    )
    return [m.content for m in response.memories]


async def rows_in(db: asyncpg.Pool, namespace_root: str) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM memory.memories WHERE namespace = $1 OR namespace LIKE $2",
        namespace_root,
        namespace_root + "/%",
    )
    return count


# ------------------------------------------------------------ create / get


async def test_create_then_get_returns_the_stored_memory(memory: Stub, tenant_a: Metadata) -> None:
    namespace = fresh_namespace("users", "u1", "preferences")
    created = await create(
        memory,
        tenant_a,
        namespace,
        "prefers aisle seats on long flights",
        metadata=struct(source="chat", turn=3),
        session="sessions/s-1",
    )
    assert created.name.startswith("memories/")
    assert created.kind == memory_pb2.MEMORY_KIND_SEMANTIC  # the default
    assert created.merge_count == 0
    assert created.etag
    assert dict(created.metadata) == {"source": "chat", "turn": 3}
    assert created.session == "sessions/s-1"
    assert created.create_time.seconds > 0
    assert created.update_time == created.create_time
    assert not created.embedding  # INPUT_ONLY
    fetched = await memory.GetMemory(
        memory_pb2.GetMemoryRequest(name=created.name), metadata=tenant_a
    )
    assert fetched == created


async def test_request_id_replays_the_first_response_of_the_same_request(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    namespace = fresh_namespace()
    request_id = str(uuid.uuid4())
    first = await create(memory, tenant_a, namespace, "alpha beta", request_id=request_id)
    again = await create(memory, tenant_a, namespace, "alpha beta", request_id=request_id)
    assert again == first
    # The same key on a different request is the client's mistake, not a retry.
    await expect_invalid(
        create(memory, tenant_a, namespace, "utterly different", request_id=request_id),
        "request_id",
    )
    # A batch item carrying that key replays when it is the same request...
    same = memory_pb2.CreateMemoryRequest(
        memory=memory_pb2.Memory(namespace=namespace, content="alpha beta"),
        request_id=request_id,
    )
    fresh = memory_pb2.CreateMemoryRequest(
        memory=memory_pb2.Memory(namespace=namespace, content="gamma delta epsilon")
    )
    response = await memory.BatchCreateMemories(
        memory_pb2.BatchCreateMemoriesRequest(requests=[fresh, same]), metadata=tenant_a
    )
    assert response.memories[1] == first
    assert await rows_in(db, namespace) == 2
    # ...and is refused, by its index, when it is not; the whole batch writes nothing.
    other = memory_pb2.CreateMemoryRequest(
        memory=memory_pb2.Memory(namespace=namespace, content="zeta eta theta"),
    )
    changed = memory_pb2.CreateMemoryRequest(
        memory=memory_pb2.Memory(
            namespace=namespace, content="alpha beta", kind=memory_pb2.MEMORY_KIND_PROCEDURAL
        ),
        request_id=request_id,
    )
    await expect_invalid(
        memory.BatchCreateMemories(
            memory_pb2.BatchCreateMemoriesRequest(requests=[other, changed]), metadata=tenant_a
        ),
        "requests[1].request_id",
    )
    assert await rows_in(db, namespace) == 2


async def test_a_client_vector_is_used_as_given(memory: Stub, tenant_a: Metadata) -> None:
    namespace = fresh_namespace()
    created = await create(memory, tenant_a, namespace, "anything", embedding=unit((5, 1.0)))
    (hit,) = await search(
        memory,
        tenant_a,
        vector=memory_pb2.Vector(values=unit((5, 2.0))),
        namespace_prefix=namespace,
    )
    assert hit.memory.name == created.name
    assert hit.score == pytest.approx(1.0, abs=1e-6)


# --------------------------------------------------------- near-duplicates


async def test_the_same_text_twice_is_merged_into_one_memory(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    namespace = fresh_namespace()
    first = await create(
        memory, tenant_a, namespace, "likes green tea in the morning", metadata=struct(a=1)
    )
    second = await create(
        memory, tenant_a, namespace, "likes green tea in the morning", metadata=struct(b=2)
    )
    assert second.name == first.name
    assert second.merge_count == 1
    assert dict(second.metadata) == {"a": 1, "b": 2}
    assert second.etag != first.etag
    assert second.update_time.ToDatetime() > first.update_time.ToDatetime()
    assert await rows_in(db, namespace) == 1

    other = await create(memory, tenant_a, namespace, "quarterly revenue report for finance")
    assert other.name != first.name
    elsewhere = await create(memory, tenant_a, namespace + "/x", "likes green tea in the morning")
    assert elsewhere.name != first.name  # merging stays within one namespace
    assert await rows_in(db, namespace) == 3


async def test_concurrent_near_duplicates_end_as_one_memory(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    # Several rounds: the first one also warms the server's pool, so later rounds
    # really run their transactions side by side.
    for _ in range(4):
        namespace = fresh_namespace()
        results = await asyncio.gather(
            *(
                create(memory, tenant_a, namespace, "the wifi password is on the fridge")
                for _ in range(8)
            )
        )
        assert len({m.name for m in results}) == 1
        assert max(m.merge_count for m in results) == 7
        assert await rows_in(db, namespace) == 1


def test_merge_plan_prefers_the_most_similar_predecessor() -> None:
    # item 0 matches existing "m1"; item 1 matches item 0 (0.97) better than "m2"
    # (0.96); item 2 matches nothing; item 3 matches item 2.
    targets, target_of = plan_merges(
        4,
        existing={0: ("m1", 0.99), 1: ("m2", 0.96)},
        earlier={1: [(0, 0.97)], 3: [(2, 0.98)]},
    )
    assert [targets[t].existing_id for t in target_of] == ["m1", "m1", None, None]
    assert target_of[2] == target_of[3]
    assert [t.items for t in targets if t.existing_id == "m2"] == [[]]


# ------------------------------------------------------------------ batch


async def test_batch_creates_in_order_and_merges_within_the_batch(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    namespace = fresh_namespace()
    texts = ["booked a trip to Lisbon in May", "booked a trip to Lisbon in May", "owns a cat"]
    response = await memory.BatchCreateMemories(
        memory_pb2.BatchCreateMemoriesRequest(
            requests=[
                memory_pb2.CreateMemoryRequest(
                    memory=memory_pb2.Memory(namespace=namespace, content=text)
                )
                for text in texts
            ]
        ),
        metadata=tenant_a,
    )
    first, second, third = response.memories
    assert first.name == second.name
    assert first.merge_count == 1
    assert third.name != first.name
    assert third.content == "owns a cat"
    assert await rows_in(db, namespace) == 2


async def test_batch_is_all_or_none(memory: Stub, tenant_a: Metadata, db: asyncpg.Pool) -> None:
    namespace = fresh_namespace()

    def item(content: str, **fields: Any) -> memory_pb2.CreateMemoryRequest:
        return memory_pb2.CreateMemoryRequest(
            memory=memory_pb2.Memory(namespace=namespace, content=content, **fields)
        )

    good = [item(f"fact number {i} about topic {i}") for i in range(3)]
    await expect_invalid(
        memory.BatchCreateMemories(
            memory_pb2.BatchCreateMemoriesRequest(requests=[*good, item("")]), metadata=tenant_a
        ),
        "requests[3].memory.content",
    )
    await expect_invalid(
        memory.BatchCreateMemories(
            memory_pb2.BatchCreateMemoriesRequest(
                requests=[*good[:2], item("x", embedding=[0.5] * 3), item("y")]
            ),
            metadata=tenant_a,
        ),
        "requests[2].memory.embedding",
    )
    duplicate_ids = [
        memory_pb2.CreateMemoryRequest(memory=r.memory, request_id="same") for r in good[:2]
    ]
    await expect_invalid(
        memory.BatchCreateMemories(
            memory_pb2.BatchCreateMemoriesRequest(requests=duplicate_ids), metadata=tenant_a
        ),
        "requests[1].request_id",
    )
    for count in (0, 501):
        await expect_invalid(
            memory.BatchCreateMemories(
                memory_pb2.BatchCreateMemoriesRequest(requests=[good[0]] * count),
                metadata=tenant_a,
            ),
            "requests",
        )
    assert await rows_in(db, namespace) == 0


# ------------------------------------------------------------ bad input


async def test_wrong_vector_dimensions_are_invalid_argument_never_a_database_error(
    memory: Stub, tenant_a: Metadata
) -> None:
    namespace = fresh_namespace()
    for bad in ([0.1] * 3, [0.1] * (DIM + 1), [0.0] * DIM, [math.nan] + [0.1] * (DIM - 1)):
        await expect_invalid(
            create(memory, tenant_a, namespace, "text", embedding=bad), "memory.embedding"
        )
        await expect_invalid(
            search(memory, tenant_a, vector=memory_pb2.Vector(values=bad)), "vector.values"
        )


@pytest.mark.parametrize(
    ("fields", "violation"),
    [
        ({"namespace": ""}, "memory.namespace"),
        ({"namespace": "a//b"}, "memory.namespace"),
        ({"namespace": "a b"}, "memory.namespace"),
        ({"namespace": "/".join(["s"] * 9)}, "memory.namespace"),
        ({"content": ""}, "memory.content"),
        ({"content": "x" * 16_385}, "memory.content"),
        ({"metadata": struct(blob="x" * 17_000)}, "memory.metadata"),
        ({"kind": 9}, "memory.kind"),
        ({"session": "chats/x"}, "memory.session"),
        ({"expire_time": in_seconds(-5)}, "memory.expire_time"),
    ],
)
async def test_malformed_memories_are_refused_naming_the_field(
    memory: Stub, tenant_a: Metadata, fields: dict[str, Any], violation: str
) -> None:
    values = {"namespace": "users/u1", "content": "valid text", **fields}
    await expect_invalid(
        memory.CreateMemory(
            memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(**values)), metadata=tenant_a
        ),
        violation,
    )


async def test_bad_names_filters_tokens_and_search_arguments(
    memory: Stub, tenant_a: Metadata
) -> None:
    for name in ("", "memories/", "sessions/abc", "memories/Not_Valid"):
        await expect_invalid(
            memory.GetMemory(memory_pb2.GetMemoryRequest(name=name), metadata=tenant_a), "name"
        )
        await expect_invalid(
            memory.DeleteMemory(memory_pb2.DeleteMemoryRequest(name=name), metadata=tenant_a),
            "name",
        )
    for bad_filter in (
        "colour = 1",
        "kind = FUZZY",
        "namespace = 'x'",
        'namespace = "a//b/*"',
        'session = "jobs/j"',
        "kind != SEMANTIC",
        "namespace",
    ):
        await expect_invalid(
            memory.ListMemories(
                memory_pb2.ListMemoriesRequest(filter=bad_filter), metadata=tenant_a
            ),
            "filter",
        )
    await expect_invalid(
        memory.ListMemories(
            memory_pb2.ListMemoriesRequest(page_token="garbage"), metadata=tenant_a
        ),
        "page_token",
    )
    await expect_invalid(
        memory.ListMemories(memory_pb2.ListMemoriesRequest(page_size=-1), metadata=tenant_a),
        "page_size",
    )
    await expect_invalid(search(memory, tenant_a), "query")
    await expect_invalid(search(memory, tenant_a, text=""), "text")
    await expect_invalid(search(memory, tenant_a, text="q", top_k=101), "top_k")
    await expect_invalid(search(memory, tenant_a, text="q", top_k=-1), "top_k")
    await expect_invalid(search(memory, tenant_a, text="q", min_score=1.5), "min_score")
    await expect_invalid(search(memory, tenant_a, text="q", kinds=[0]), "kinds[0]")
    await expect_invalid(
        search(memory, tenant_a, text="q", namespace_prefix="a/"), "namespace_prefix"
    )


async def test_unknown_memories_are_not_found(memory: Stub, tenant_a: Metadata) -> None:
    name = "memories/r" + uuid.uuid4().hex
    await expect_error(
        memory.GetMemory(memory_pb2.GetMemoryRequest(name=name), metadata=tenant_a),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        memory.DeleteMemory(memory_pb2.DeleteMemoryRequest(name=name), metadata=tenant_a),
        grpc.StatusCode.NOT_FOUND,
    )
    await memory.DeleteMemory(
        memory_pb2.DeleteMemoryRequest(name=name, allow_missing=True), metadata=tenant_a
    )
    await expect_error(
        memory.UpdateMemory(
            memory_pb2.UpdateMemoryRequest(
                memory=memory_pb2.Memory(name=name, content="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["content"]),
            ),
            metadata=tenant_a,
        ),
        grpc.StatusCode.NOT_FOUND,
    )


# ------------------------------------------------------------------ search


async def test_search_by_text_ranks_the_relevant_memory_first(
    memory: Stub, tenant_a: Metadata
) -> None:
    namespace = fresh_namespace()
    for text in (
        "prefers aisle seats on long flights",
        "allergic to peanuts and shellfish",
        "works as a software engineer in Berlin",
    ):
        await create(memory, tenant_a, namespace, text)
    hits = await search(memory, tenant_a, text="which seats on flights", namespace_prefix=namespace)
    assert hits[0].memory.content == "prefers aisle seats on long flights"
    scores = [hit.score for hit in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 <= s <= 1.0 for s in scores)
    top = await search(memory, tenant_a, text="peanuts", namespace_prefix=namespace, top_k=1)
    assert [hit.memory.content for hit in top] == ["allergic to peanuts and shellfish"]


async def test_namespace_prefix_is_segment_wise(memory: Stub, tenant_a: Metadata) -> None:
    root = fresh_namespace()
    for namespace in ("users/u1", "users/u1/prefs", "users/u10", "users/u1x"):
        await create(memory, tenant_a, f"{root}/{namespace}", f"note kept under {namespace}")
    hits = await search(
        memory, tenant_a, text="note kept under", namespace_prefix=f"{root}/users/u1"
    )
    assert sorted(hit.memory.namespace for hit in hits) == [
        f"{root}/users/u1",
        f"{root}/users/u1/prefs",
    ]
    below = await listed(memory, tenant_a, f'namespace = "{root}/users/u1/*"')
    assert sorted(below) == ["note kept under users/u1", "note kept under users/u1/prefs"]
    exact = await listed(memory, tenant_a, f'namespace = "{root}/users/u1"')
    assert exact == ["note kept under users/u1"]
    # '_' is a LIKE wildcard and a legal namespace character: it must match literally.
    await create(memory, tenant_a, f"{root}/a_b/x", "underscore path")
    await create(memory, tenant_a, f"{root}/aXb/x", "lookalike path")
    assert await listed(memory, tenant_a, f'namespace = "{root}/a_b/*"') == ["underscore path"]


async def test_kind_and_metadata_filters(memory: Stub, tenant_a: Metadata) -> None:
    namespace = fresh_namespace()
    await create(
        memory,
        tenant_a,
        namespace,
        "flight booking episode one",
        metadata=struct(topic="travel", n=1),
    )
    await create(
        memory,
        tenant_a,
        namespace,
        "flight booking procedure steps",
        kind=memory_pb2.MEMORY_KIND_PROCEDURAL,
        metadata=struct(topic="travel", n=2),
    )
    await create(
        memory,
        tenant_a,
        namespace,
        "flight booking happened yesterday",
        kind=memory_pb2.MEMORY_KIND_EPISODIC,
        metadata=struct(topic="work"),
        session="sessions/trip",
    )
    procedural = await search(
        memory,
        tenant_a,
        text="flight booking",
        namespace_prefix=namespace,
        kinds=[memory_pb2.MEMORY_KIND_PROCEDURAL],
    )
    assert [hit.memory.content for hit in procedural] == ["flight booking procedure steps"]
    travel = await search(
        memory,
        tenant_a,
        text="flight booking",
        namespace_prefix=namespace,
        metadata_filter=struct(topic="travel"),
    )
    assert sorted(hit.memory.metadata.fields["n"].number_value for hit in travel) == [1, 2]
    both = await search(
        memory,
        tenant_a,
        text="flight booking",
        namespace_prefix=namespace,
        metadata_filter=struct(topic="travel"),
        kinds=[memory_pb2.MEMORY_KIND_SEMANTIC],
    )
    assert [hit.memory.content for hit in both] == ["flight booking episode one"]

    scope = f'namespace = "{namespace}"'
    assert await listed(memory, tenant_a, f"{scope} AND kind = EPISODIC") == [
        "flight booking happened yesterday"
    ]
    assert await listed(memory, tenant_a, f'{scope} AND metadata.n = "2"') == [
        "flight booking procedure steps"
    ]
    assert await listed(memory, tenant_a, f'{scope} AND session = "sessions/trip"') == [
        "flight booking happened yesterday"
    ]


async def test_min_score_drops_weaker_matches(memory: Stub, tenant_a: Metadata) -> None:
    namespace = fresh_namespace()
    await create(memory, tenant_a, namespace, "same", embedding=unit((0, 1.0)))
    await create(memory, tenant_a, namespace, "close", embedding=unit((0, 1.0), (1, 1.0)))
    await create(memory, tenant_a, namespace, "opposite", embedding=unit((0, -1.0)))
    query = memory_pb2.Vector(values=unit((0, 1.0)))

    async def contents(min_score: float) -> list[str]:
        hits = await search(
            memory, tenant_a, vector=query, namespace_prefix=namespace, min_score=min_score
        )
        return [hit.memory.content for hit in hits]

    assert await contents(0.0) == ["same", "close"]  # 0 keeps non-negative matches
    assert await contents(0.9) == ["same"]
    assert await contents(-1.0) == ["same", "close", "opposite"]


# ------------------------------------------------------- expiry & tenants


async def test_expired_memories_are_gone_for_every_read(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    namespace = fresh_namespace()
    text = "temporary note about the parking spot"
    doomed = await create(memory, tenant_a, namespace, text, expire_time=in_seconds(3600))
    get = memory.GetMemory(memory_pb2.GetMemoryRequest(name=doomed.name), metadata=tenant_a)
    assert (await get).name == doomed.name
    assert len(await search(memory, tenant_a, text=text, namespace_prefix=namespace)) == 1
    # Its time passes: moved in the database, so no read above can race the expiry.
    await db.execute(
        "UPDATE memory.memories SET expire_time = now() - interval '1 second'"
        " WHERE tenant = 'tenant-a' AND id = $1",
        doomed.name.removeprefix("memories/"),
    )
    await expect_error(
        memory.GetMemory(memory_pb2.GetMemoryRequest(name=doomed.name), metadata=tenant_a),
        grpc.StatusCode.NOT_FOUND,
    )
    assert await search(memory, tenant_a, text=text, namespace_prefix=namespace) == []
    assert await listed(memory, tenant_a, f'namespace = "{namespace}"') == []
    # An expired memory is not a merge target either: the same text starts afresh.
    reborn = await create(memory, tenant_a, namespace, text)
    assert reborn.name != doomed.name
    assert reborn.merge_count == 0


async def test_another_tenant_never_sees_or_touches_a_memory(
    memory: Stub, tenant_a: Metadata, tenant_b: Metadata
) -> None:
    namespace = fresh_namespace()
    text = "tenant a secret plan for the launch"
    mine = await create(memory, tenant_a, namespace, text)
    await expect_error(
        memory.GetMemory(memory_pb2.GetMemoryRequest(name=mine.name), metadata=tenant_b),
        grpc.StatusCode.NOT_FOUND,
    )
    assert await listed(memory, tenant_b, f'namespace = "{namespace}"') == []
    seen_by_b = await search(memory, tenant_b, text=text, min_score=-1.0, top_k=100)
    assert all(hit.memory.name != mine.name for hit in seen_by_b)
    await expect_error(
        memory.UpdateMemory(
            memory_pb2.UpdateMemoryRequest(
                memory=memory_pb2.Memory(name=mine.name, content="hijacked"),
                update_mask=field_mask_pb2.FieldMask(paths=["content"]),
            ),
            metadata=tenant_b,
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        memory.DeleteMemory(memory_pb2.DeleteMemoryRequest(name=mine.name), metadata=tenant_b),
        grpc.StatusCode.NOT_FOUND,
    )
    theirs = await create(memory, tenant_b, namespace, text)  # no cross-tenant merge
    assert theirs.name != mine.name
    assert theirs.merge_count == 0
    again = await memory.GetMemory(memory_pb2.GetMemoryRequest(name=mine.name), metadata=tenant_a)
    assert again.content == text
    assert again.merge_count == 0


# ------------------------------------------------------ list / update / delete


async def test_list_is_newest_first_with_page_tokens(memory: Stub, tenant_a: Metadata) -> None:
    namespace = fresh_namespace()
    names = [(await create(memory, tenant_a, namespace, f"entry {word}")).name for word in "abcde"]
    query = f'namespace = "{namespace}"'
    seen: list[str] = []
    token = ""
    while True:
        page = await memory.ListMemories(
            memory_pb2.ListMemoriesRequest(filter=query, page_size=2, page_token=token),
            metadata=tenant_a,
        )
        seen += [m.name for m in page.memories]
        token = page.next_page_token
        if not token:
            break
        assert len(page.memories) == 2
    assert seen == names[::-1]
    first = await memory.ListMemories(
        memory_pb2.ListMemoriesRequest(filter=query, page_size=2), metadata=tenant_a
    )
    await expect_invalid(
        memory.ListMemories(
            memory_pb2.ListMemoriesRequest(
                filter=query + " AND kind = SEMANTIC", page_token=first.next_page_token
            ),
            metadata=tenant_a,
        ),
        "page_token",
    )


async def test_update_masks_reembeds_and_checks_the_etag(memory: Stub, tenant_a: Metadata) -> None:
    namespace = fresh_namespace()
    created = await create(
        memory, tenant_a, namespace, "enjoys hiking in the alps", metadata=struct(a=1)
    )

    async def update(paths: list[str], **fields: Any) -> memory_pb2.Memory:
        return await memory.UpdateMemory(
            memory_pb2.UpdateMemoryRequest(
                memory=memory_pb2.Memory(name=created.name, **fields),
                update_mask=field_mask_pb2.FieldMask(paths=paths),
            ),
            metadata=tenant_a,
        )

    changed = await update(
        ["content", "kind", "metadata"],
        content="plays chess on sundays",
        kind=memory_pb2.MEMORY_KIND_EPISODIC,
        metadata=struct(b=2),
        etag=created.etag,
    )
    assert changed.content == "plays chess on sundays"
    assert changed.kind == memory_pb2.MEMORY_KIND_EPISODIC
    assert dict(changed.metadata) == {"b": 2}
    assert changed.etag != created.etag
    (hit,) = await search(
        memory, tenant_a, text="plays chess on sundays", namespace_prefix=namespace
    )
    assert hit.memory.name == created.name  # re-embedded
    assert hit.score == pytest.approx(1.0)  # the vector of the new content

    await expect_error(
        update(["content"], content="stale write", etag=created.etag), grpc.StatusCode.ABORTED
    )
    current = await memory.GetMemory(
        memory_pb2.GetMemoryRequest(name=created.name), metadata=tenant_a
    )
    assert current.content == "plays chess on sundays"  # the stale write changed nothing
    await expect_invalid(update([], content="x"), "update_mask")
    await expect_invalid(update(["merge_count"]), "update_mask")
    await expect_invalid(update(["content"], content=""), "memory.content")
    await expect_invalid(update(["namespace"], namespace="bad//ns"), "memory.namespace")
    await expect_invalid(update(["kind"], embedding=[0.1] * DIM), "memory.embedding")
    await expect_invalid(update(["content"], content="x", etag="nonsense"), "memory.etag")

    moved = await update(
        ["namespace", "expire_time"], namespace=namespace + "/moved", expire_time=in_seconds(600)
    )
    assert moved.namespace == namespace + "/moved"
    assert moved.expire_time.seconds > 0
    cleared = await update(["expire_time"])
    assert not cleared.HasField("expire_time")

    await memory.DeleteMemory(memory_pb2.DeleteMemoryRequest(name=created.name), metadata=tenant_a)
    await expect_error(
        memory.GetMemory(memory_pb2.GetMemoryRequest(name=created.name), metadata=tenant_a),
        grpc.StatusCode.NOT_FOUND,
    )


# ------------------------------------------------- embedder failures


class _FailingEmbedder:
    def __init__(self, error: Exception | None = None, dimension: int = DIM) -> None:
        self.error = error
        self.returned_dimension = dimension

    @property
    def dimension(self) -> int:
        return DIM

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if self.error is not None:
            raise self.error
        return [[1.0] * self.returned_dimension for _ in texts]


@asynccontextmanager
async def server_with(
    backends: Any, embedder: Any, **env: str
) -> AsyncIterator[tuple[Stub, Metadata]]:
    """A second Memory server (own secret) over the shared backends."""
    secret = "memories-test-secret-of-at-least-32-bytes"
    environ = {
        "AGENTMESH_GRPC_PORT": "0",
        "AGENTMESH_METRICS_PORT": "0",
        "AGENTMESH_AUTH_HS256_SECRET": secret,
        "AGENTMESH_DATABASE_URL": backends.memory_url,
        "AGENTMESH_REDIS_URL": backends.redis_url,
        **env,
    }
    settings = Settings.from_env(environ, service="memory")
    memory = MemorySettings.from_env(environ)
    running = await start_server(settings, await build_memory(settings, memory, embedder=embedder))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = cast(Stub, memory_pb2_grpc.MemoryServiceStub(channel))
            yield stub, (("authorization", f"Bearer {mint_token(secret, 'tenant-a')}"),)
    finally:
        await running.stop(0)


async def test_embedder_failures_map_to_retryable_codes_and_write_nothing(
    backends: Any, db: asyncpg.Pool
) -> None:
    namespace = fresh_namespace()
    cases = [
        (ResourceExhausted("quota", retry_after_s=7.5), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (EmbedderUnavailable("provider down"), grpc.StatusCode.UNAVAILABLE),
        (None, grpc.StatusCode.INTERNAL),  # answers 383-dim vectors: misconfigured
    ]
    for error, code in cases:
        embedder = _FailingEmbedder(error, dimension=DIM - 1)
        async with server_with(backends, embedder) as (stub, auth):
            failure = await expect_error(create(stub, auth, namespace, "some text"), code)
            await expect_error(search(stub, auth, text="some text"), code)
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                (retry,) = details_of(failure, error_details_pb2.RetryInfo)
                assert retry.retry_delay.seconds == 7
                assert retry.retry_delay.nanos == 500_000_000
            if code == grpc.StatusCode.INTERNAL:
                assert "383" in (failure.details() or "")
    assert await rows_in(db, namespace) == 0


async def test_merge_threshold_is_a_setting(backends: Any) -> None:
    namespace = fresh_namespace()
    async with server_with(backends, None, AGENTMESH_MEMORY_MERGE_SIMILARITY="0.5") as (stub, auth):
        first = await create(stub, auth, namespace, "likes strong black coffee")
        second = await create(stub, auth, namespace, "likes strong black coffee every morning")
    assert second.name == first.name
    assert second.merge_count == 1


# ------------------------------------------------- start-up checks & index


async def test_startup_checks_refuse_a_dimension_the_column_cannot_hold(db: asyncpg.Pool) -> None:
    ok = MemorySettings.from_env({})
    await check_memory_store(db, ok)
    wrong = MemorySettings.from_env({"AGENTMESH_MEMORY_EMBEDDING_DIM": "512"})
    with pytest.raises(ConfigError, match="vector\\(384\\)"):
        await check_memory_store(db, wrong)
    minilm_512 = MemorySettings.from_env(
        {"AGENTMESH_MEMORY_EMBEDDER": "minilm", "AGENTMESH_MEMORY_EMBEDDING_DIM": "512"}
    )
    with pytest.raises(ConfigError, match="384"):
        build_embedder(minilm_512, timeout_s=1.0)


async def test_hnsw_index_is_built_by_the_migration_step_and_checked_by_the_service(
    db: asyncpg.Pool, backends: Any
) -> None:
    async def options() -> list[str]:
        found: list[str] = await db.fetchval(
            "SELECT reloptions FROM pg_class WHERE relname = 'memories_embedding_hnsw'"
        )
        return sorted(found)

    defaults = MemorySettings.from_env({})
    other_env = {"AGENTMESH_MEMORY_HNSW_M": "12", "AGENTMESH_MEMORY_HNSW_EF_CONSTRUCTION": "48"}
    other = MemorySettings.from_env(other_env)
    await check_hnsw_index(db, defaults)
    # A service configured otherwise than the index refuses to start, naming the
    # command that rebuilds it; it never builds the index itself.
    with pytest.raises(ConfigError, match=re.escape(MIGRATE_COMMAND)) as refused:
        await check_hnsw_index(db, other)
    assert "m=16" in str(refused.value)
    assert "AGENTMESH_MEMORY_HNSW_M=12" in str(refused.value)
    with pytest.raises(ConfigError, match="HNSW"):
        async with server_with(backends, None, **other_env):
            pass
    # The migration step (as the owner) rebuilds it; then that service may start.
    async with db.acquire() as conn:
        assert await ensure_hnsw_index(conn, defaults) is False
        try:
            assert await ensure_hnsw_index(conn, other) is True
            assert await options() == ["ef_construction=48", "m=12"]
            assert await ensure_hnsw_index(conn, other) is False
            await check_hnsw_index(db, other)
            with pytest.raises(ConfigError, match="ef_construction=48"):
                await check_hnsw_index(db, defaults)
        finally:
            await ensure_hnsw_index(conn, defaults)
    assert await options() == ["ef_construction=64", "m=16"]


# ----------------------------------------------------------------- recall


def _structured_vectors(
    rng: random.Random, basis: list[list[float]], count: int
) -> list[list[float]]:
    """Points of a 32-dim latent space projected to 384 dims, plus a little noise:
    the low intrinsic dimension of real embeddings (i.i.d. random vectors would make
    every HNSW look broken)."""
    columns = list(zip(*basis, strict=True))  # 384 columns of 32 latent weights
    vectors = []
    for _ in range(count):
        latent = [rng.gauss(0.0, 1.0) for _ in basis]
        vectors.append(
            [
                sum(w * z for w, z in zip(column, latent, strict=True)) + rng.gauss(0.0, 0.05)
                for column in columns
            ]
        )
    return vectors


async def test_hnsw_recall_at_10_against_an_exact_scan(
    memory: Stub, tenant_a: Metadata, backends: Any
) -> None:
    rng = random.Random(20261124)
    basis = [[rng.gauss(0.0, 1.0) for _ in range(DIM)] for _ in range(32)]
    namespace = fresh_namespace("recall")
    data = _structured_vectors(rng, basis, 2000)
    names: set[str] = set()
    for start in range(0, len(data), 500):
        response = await memory.BatchCreateMemories(
            memory_pb2.BatchCreateMemoriesRequest(
                requests=[
                    memory_pb2.CreateMemoryRequest(
                        memory=memory_pb2.Memory(
                            namespace=namespace, content=f"point {start + i}", embedding=vector
                        )
                    )
                    for i, vector in enumerate(data[start : start + 500])
                ]
            ),
            metadata=tenant_a,
        )
        names.update(m.name for m in response.memories)
    assert len(names) == 2000  # nothing merged: the data has no near-duplicates

    conn = await asyncpg.connect(backends.database_url)
    try:
        await register_vector(conn)
        await conn.execute("ANALYZE memory.memories")
        recalls = []
        for vector in _structured_vectors(rng, basis, 30):
            query = SearchQuery(vector, namespace, (), None, 10, -1.0)
            sql, params = search_sql("tenant-a", query)
            plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, *params))
            assert "memories_embedding_hnsw" in plan, plan  # the index is what we test
            async with conn.transaction():
                await conn.execute("SET LOCAL enable_indexscan = off")
                await conn.execute("SET LOCAL enable_bitmapscan = off")
                exact = {row["id"] for row in await conn.fetch(sql, *params)}
            hits = await search(
                memory,
                tenant_a,
                vector=memory_pb2.Vector(values=vector),
                namespace_prefix=namespace,
                top_k=10,
                min_score=-1.0,
            )
            assert len(exact) == len(hits) == 10
            recalls.append(
                len(exact & {h.memory.name.removeprefix("memories/") for h in hits}) / 10
            )
    finally:
        await conn.close()
    assert sum(recalls) / len(recalls) >= 0.9, recalls


async def test_top_k_above_ef_search_still_returns_top_k(backends: Any) -> None:
    """The contract: top_k results whatever hnsw.ef_search is (searches run on the
    connection's ef_search; a larger top_k takes the SET LOCAL path)."""
    async with server_with(backends, None, AGENTMESH_MEMORY_HNSW_EF_SEARCH="2") as (stub, auth):
        namespace = fresh_namespace()
        words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
        await stub.BatchCreateMemories(
            memory_pb2.BatchCreateMemoriesRequest(
                requests=[
                    memory_pb2.CreateMemoryRequest(
                        memory=memory_pb2.Memory(
                            namespace=namespace, content=f"{word} likes {other} tea"
                        )
                    )
                    for word in words
                    for other in ("green", "black")
                ]
            ),
            metadata=auth,
        )
        found = await stub.SearchMemories(
            memory_pb2.SearchMemoriesRequest(
                text="likes tea", namespace_prefix=namespace, top_k=10, min_score=-1.0
            ),
            metadata=auth,
        )
        assert len(found.results) == 10
