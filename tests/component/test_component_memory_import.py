"""MemoryService.ImportMemories over real gRPC and PostgreSQL: the bulk path.

An import stores its memories with COPY outside the HNSW index; reads find them at
once (searches and near-duplicate lookups read the unindexed tail exactly), and the
indexer adds them to the index in the background. The shared servers of the
component tests run without an indexer (``memory_settings``), so a test sees its
imported memories unindexed until it starts a server whose indexer is on.
"""

from __future__ import annotations

import math
import random
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agentmesh.v1 import memory_pb2
from component.conftest import Backends, Metadata, credentials
from component.memory_helpers import (
    Stub,
    error_info,
    eventually,
    expect_error,
    field_violations,
    serve_memory,
    struct,
    uid,
)

DIM = 384


def random_unit(rng: random.Random) -> list[float]:
    vector = [rng.gauss(0.0, 1.0) for _ in range(DIM)]
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector]


def nudged(vector: list[float], rng: random.Random, by: float = 0.01) -> list[float]:
    """A near-duplicate: similarity about 0.99 to ``vector``."""
    return [v + rng.gauss(0.0, by / math.sqrt(DIM)) for v in vector]


def item(namespace: str, content: str, vector: list[float] | None, **fields: Any) -> Any:
    memory = memory_pb2.Memory(namespace=namespace, content=content, **fields)
    if vector is not None:
        memory.embedding.extend(vector)
    return memory


async def import_(
    memory: Stub, auth: Metadata, items: list[Any], request_id: str = ""
) -> memory_pb2.ImportMemoriesResponse:
    response: memory_pb2.ImportMemoriesResponse = await memory.ImportMemories(
        memory_pb2.ImportMemoriesRequest(memories=items, request_id=request_id), metadata=auth
    )
    return response


async def indexed_flags(db: asyncpg.Pool, names: list[str]) -> list[bool]:
    ids = [name.removeprefix("memories/") for name in names]
    rows = await db.fetch("SELECT id, indexed FROM memory.memories WHERE id = ANY($1)", ids)
    flags = {row["id"]: row["indexed"] for row in rows}
    return [flags[memory_id] for memory_id in ids]


async def top_hit(memory: Stub, auth: Metadata, vector: list[float], prefix: str) -> Any:
    response = await memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(
            vector=memory_pb2.Vector(values=vector), namespace_prefix=prefix, top_k=3
        ),
        metadata=auth,
    )
    return response.results[0] if response.results else None


# ---------------------------------------------------------------- the bulk path


async def test_import_stores_every_item_unindexed_and_readable_at_once(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    rng = random.Random(1)
    namespace = f"import/{uid()}"
    vectors = [random_unit(rng) for _ in range(40)]
    items = [
        item(namespace, f"fact {i}", v, kind=memory_pb2.MEMORY_KIND_SEMANTIC, metadata=struct(n=i))
        for i, v in enumerate(vectors)
    ]
    response = await import_(memory, tenant_a, items)
    assert response.imported_count == 40
    assert response.merged_count == 0
    assert len(set(response.names)) == 40
    # Durable and outside the index until an indexer adds them.
    assert await indexed_flags(db, list(response.names)) == [False] * 40
    got = await memory.GetMemory(
        memory_pb2.GetMemoryRequest(name=response.names[7]), metadata=tenant_a
    )
    assert got.content == "fact 7"
    assert got.metadata["n"] == 7
    assert got.namespace == namespace
    # Listed newest first in request order (the slice's last item first).
    listed = await memory.ListMemories(
        memory_pb2.ListMemoriesRequest(filter=f'namespace = "{namespace}"', page_size=100),
        metadata=tenant_a,
    )
    assert [m.content for m in listed.memories] == [f"fact {i}" for i in reversed(range(40))]
    # Every one is its own best search hit: the search reads the unindexed tail.
    for i in (0, 13, 39):
        hit = await top_hit(memory, tenant_a, vectors[i], namespace)
        assert hit is not None
        assert hit.memory.name == response.names[i]
        assert hit.score > 0.999


async def test_search_mixes_indexed_memories_and_the_unindexed_tail(
    memory: Stub, tenant_a: Metadata
) -> None:
    rng = random.Random(2)
    namespace = f"import/{uid()}"
    base = random_unit(rng)
    # Three close to `base` created the usual way (indexed), three imported.
    created = []
    for i in range(3):
        made = await memory.CreateMemory(
            memory_pb2.CreateMemoryRequest(
                memory=item(namespace, f"made {i}", nudged(base, rng, 0.9))
            ),
            metadata=tenant_a,
        )
        created.append(made.name)
    imported = await import_(
        memory,
        tenant_a,
        [item(namespace, f"imported {i}", nudged(base, rng, 0.9)) for i in range(3)],
    )
    response = await memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(
            vector=memory_pb2.Vector(values=base), namespace_prefix=namespace, top_k=6
        ),
        metadata=tenant_a,
    )
    assert {r.memory.name for r in response.results} == {*created, *imported.names}
    scores = [r.score for r in response.results]
    assert scores == sorted(scores, reverse=True)
    # top_k bounds the union, best first.
    best = await memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(
            vector=memory_pb2.Vector(values=base), namespace_prefix=namespace, top_k=2
        ),
        metadata=tenant_a,
    )
    assert [r.memory.name for r in best.results] == [r.memory.name for r in response.results[:2]]


async def test_near_duplicates_within_an_import_are_merged(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    rng = random.Random(3)
    namespace, other = f"import/{uid()}", f"import/{uid()}"
    a, b = random_unit(rng), random_unit(rng)
    items = [
        item(namespace, "first", a, metadata=struct(x=1)),
        item(namespace, "unrelated", b),
        item(namespace, "first again", nudged(a, rng), metadata=struct(y=2)),
        item(other, "first elsewhere", a),  # another namespace: never merged
    ]
    response = await import_(memory, tenant_a, items)
    names = list(response.names)
    assert names[0] == names[2]
    assert len(set(names)) == 3
    assert response.imported_count == 3
    assert response.merged_count == 1
    merged = await memory.GetMemory(memory_pb2.GetMemoryRequest(name=names[0]), metadata=tenant_a)
    assert merged.content == "first again"
    assert merged.merge_count == 1
    assert dict(merged.metadata) == {"x": 1, "y": 2}
    stored = await db.fetchval(
        "SELECT count(*) FROM memory.memories WHERE namespace = ANY($1)", [namespace, other]
    )
    assert stored == 3


async def test_a_create_merges_into_an_unindexed_imported_memory(
    memory: Stub, tenant_a: Metadata
) -> None:
    rng = random.Random(4)
    small, large = f"import/{uid()}", f"import/{uid()}"
    # A small namespace is compared exactly; a large one (over 300 memories) walks
    # the index and reads the unindexed tail: the imported memory is in the tail.
    filler = [random_unit(rng) for _ in range(320)]
    await import_(memory, tenant_a, [item(large, f"filler {i}", v) for i, v in enumerate(filler)])
    for namespace in (small, large):
        target = random_unit(rng)
        (name,) = (await import_(memory, tenant_a, [item(namespace, "imported", target)])).names
        again = await memory.CreateMemory(
            memory_pb2.CreateMemoryRequest(memory=item(namespace, "created", nudged(target, rng))),
            metadata=tenant_a,
        )
        assert again.name == name, namespace
        assert again.merge_count == 1, namespace


async def test_an_import_without_vectors_is_embedded(memory: Stub, tenant_a: Metadata) -> None:
    namespace = f"import/{uid()}"
    texts = ["the cat sat on the mat", "quarterly tax return due in april", "pasta with basil"]
    response = await import_(memory, tenant_a, [item(namespace, t, None) for t in texts])
    hits = await memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(text="tax return april", namespace_prefix=namespace),
        metadata=tenant_a,
    )
    assert hits.results[0].memory.name == response.names[1]


async def test_an_import_is_idempotent_by_request_id(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    rng = random.Random(5)
    namespace = f"import/{uid()}"
    items = [item(namespace, f"slice item {i}", random_unit(rng)) for i in range(5)]
    key = "import-" + uid()
    first = await import_(memory, tenant_a, items, request_id=key)
    again = await import_(memory, tenant_a, items, request_id=key)
    assert again == first
    count = await db.fetchval(
        "SELECT count(*) FROM memory.memories WHERE namespace = $1", namespace
    )
    assert count == 5
    violations = await field_violations(import_(memory, tenant_a, items[:2], request_id=key))
    assert "request_id" in violations


async def test_bad_imports_are_refused_and_change_nothing(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    rng = random.Random(6)
    namespace = f"import/{uid()}"
    good = item(namespace, "fine", random_unit(rng))
    assert "memories" in await field_violations(import_(memory, tenant_a, []))
    too_many = [item(namespace, f"x{i}", None) for i in range(1001)]
    assert "memories" in await field_violations(import_(memory, tenant_a, too_many))
    huge = [item(namespace, "y" * 60_000, None) for _ in range(20)]  # 1.2 M characters
    assert "memories" in await field_violations(import_(memory, tenant_a, huge))
    bad = [
        good,
        item(namespace, "", None),
        item("/bad//ns", "text", None),
        item(namespace, "short vector", [0.1, 0.2]),
        item(namespace, "bad session", None, session="not-a-session"),
    ]
    violations = await field_violations(import_(memory, tenant_a, bad))
    assert {
        "memories[1].content",
        "memories[2].namespace",
        "memories[3].embedding",
        "memories[4].session",
    } <= set(violations)
    assert "memories[0].content" not in violations
    bad_key = await field_violations(import_(memory, tenant_a, [good], request_id="a\x00b"))
    assert "request_id" in bad_key
    stored = await db.fetchval(
        "SELECT count(*) FROM memory.memories WHERE namespace = $1", namespace
    )
    assert stored == 0


async def test_another_tenant_never_sees_imported_memories(
    memory: Stub, tenant_a: Metadata, tenant_b: Metadata
) -> None:
    rng = random.Random(7)
    namespace = f"import/{uid()}"
    vector = random_unit(rng)
    (name,) = (await import_(memory, tenant_a, [item(namespace, "a's secret", vector)])).names
    await expect_error(
        memory.GetMemory(memory_pb2.GetMemoryRequest(name=name), metadata=tenant_b),
        grpc.StatusCode.NOT_FOUND,
    )
    assert await top_hit(memory, tenant_b, vector, namespace) is None
    # tenant-b importing the same vector gets its own memory, never a merge into a's.
    (own,) = (await import_(memory, tenant_b, [item(namespace, "b's", vector)])).names
    assert own != name


async def test_an_import_waits_while_the_tenant_backlog_is_full(
    backends: Backends, tenant_b: Metadata
) -> None:
    rng = random.Random(8)
    namespace = f"import/{uid()}"
    tenant = credentials("import-" + uid(8))  # a backlog of its own to fill
    async with serve_memory(backends, AGENTMESH_MEMORY_IMPORT_MAX_UNINDEXED="3") as server:
        await import_(
            server, tenant, [item(namespace, f"i{i}", random_unit(rng)) for i in range(3)]
        )
        error = await expect_error(
            import_(server, tenant, [item(namespace, "one more", random_unit(rng))]),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert error_info(error).reason == "IMPORT_BACKLOG"
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        assert status is not None
        retry = error_details_pb2.RetryInfo()
        assert any(detail.Unpack(retry) for detail in status.details)
        assert retry.retry_delay.seconds >= 1
        # Ordinary creates go on; so do other tenants' imports.
        await server.CreateMemory(
            memory_pb2.CreateMemoryRequest(memory=item(namespace, "created", random_unit(rng))),
            metadata=tenant,
        )
        await import_(server, tenant_b, [item(namespace, "b", random_unit(rng))])


async def test_the_indexer_adds_imported_memories_to_the_index(
    backends: Backends, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    rng = random.Random(9)
    namespace = f"import/{uid()}"
    vectors = [random_unit(rng) for _ in range(250)]
    async with serve_memory(
        backends,
        AGENTMESH_MEMORY_INDEXER_INTERVAL_S="0.2",
        AGENTMESH_MEMORY_INDEXER_BATCH_SIZE="40",
    ) as server:
        response = await import_(
            server, tenant_a, [item(namespace, f"v{i}", v) for i, v in enumerate(vectors)]
        )
        names = list(response.names)

        async def all_indexed() -> bool:
            return all(await indexed_flags(db, names))

        await eventually(all_indexed, "the indexer to index 250 imported memories", 60)
        # Indexing is not an edit: versions are untouched, and the index finds them.
        versions = await db.fetch(
            "SELECT version, merge_count FROM memory.memories WHERE namespace = $1", namespace
        )
        assert {(r["version"], r["merge_count"]) for r in versions} == {(1, 0)}
        hit = await top_hit(server, tenant_a, vectors[100], namespace)
        assert hit is not None
        assert hit.memory.name == names[100]
