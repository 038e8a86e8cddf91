"""Part 2, ingest: CreateMemory and BatchCreateMemories, beside the database's own floor."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import asyncpg  # type: ignore[import-untyped]
from pgvector import Vector
from pgvector.asyncpg import register_vector

from agentmesh.bench.memory.clients import aio_channel, aio_stub, percentiles_ms
from agentmesh.bench.memory.options import TENANT, Sizes
from agentmesh.bench.memory.stack import Stack, children_cpu_s
from agentmesh.bench.memory_data import DIMENSION, sentences
from agentmesh.bench.procs import grpc_metadata, proc_cpu_s
from agentmesh.bench.suite import JsonDict
from agentmesh.memory.domain.merging import NewMemory
from agentmesh.memory.embedders.hashing import HashEmbedder
from agentmesh.memory.settings import MemorySettings
from agentmesh.memory.stores.memories import write_memories
from agentmesh.v1 import memory_pb2

INGEST_NAMESPACES: Final = 20
RAW_TENANT: Final = "bench-raw"
MERGE_SIMILARITY: Final = MemorySettings().merge_similarity


def _create_request(text: str, index: int) -> memory_pb2.CreateMemoryRequest:
    memory = memory_pb2.Memory(
        namespace=f"users/u{index % INGEST_NAMESPACES:02d}/notes",
        kind=memory_pb2.MEMORY_KIND_EPISODIC,
        content=text,
    )
    memory.metadata.update({"source": "bench", "seq": index})
    return memory_pb2.CreateMemoryRequest(memory=memory)


async def timed_calls(
    calls: Sequence[Callable[[], Awaitable[Sequence[memory_pb2.Memory]]]],
    concurrency: int,
    bound_s: float,
) -> tuple[list[float], list[memory_pb2.Memory], float, bool]:
    """Runs `calls` with `concurrency` workers until done or `bound_s`; returns per-call
    latencies, every returned memory, the wall time and whether it was cut short."""
    latencies: list[float] = []
    returned: list[memory_pb2.Memory] = []
    pending = list(reversed(calls))
    deadline = time.monotonic() + bound_s
    cut = False

    async def worker() -> None:
        nonlocal cut
        while pending:
            if time.monotonic() > deadline:
                cut = True
                return
            call = pending.pop()
            t0 = time.perf_counter()
            got = await call()
            latencies.append(time.perf_counter() - t0)
            returned.extend(got)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, returned, time.perf_counter() - t0, cut


async def run_ingest(stack: Stack, token: str, sizes: Sizes) -> JsonDict:
    modes: list[tuple[str, int, int, int]] = [  # (key, items per call, calls, concurrency)
        ("create-sequential", 1, sizes.ingest_single, 1),
        ("create-16-concurrent", 1, sizes.ingest_concurrent, 16),
        *((f"batch-{b}", b, n, 1) for b, n in sizes.ingest_batches.items()),
    ]
    floor = sum(size * count for size, count in sizes.ingest_batches.items())
    floor += sizes.ingest_concurrent  # the single-write floor's
    total = sum(per * calls for _, per, calls, _c in modes) + 20 + floor
    texts = sentences(total)
    md = grpc_metadata(token, "bench-memory-ingest")
    results: list[JsonDict] = []
    problems: list[str] = []
    next_text = 0
    assert stack.memory is not None
    async with aio_channel(stack.memory_address) as channel:
        stub = aio_stub(channel)

        async def one(req: memory_pb2.CreateMemoryRequest) -> Sequence[memory_pb2.Memory]:
            return [await stub.CreateMemory(req, metadata=md, timeout=30.0)]

        async def batch(req: memory_pb2.BatchCreateMemoriesRequest) -> Sequence[memory_pb2.Memory]:
            response = await stub.BatchCreateMemories(req, metadata=md, timeout=120.0)
            return list(response.memories)

        # Warm-up: connections, the embedder's code paths, the pool.
        for i in range(20):
            await one(_create_request(texts[i], i))
        next_text = 20
        for key, per_call, calls, concurrency in modes:
            work: list[Callable[[], Awaitable[Sequence[memory_pb2.Memory]]]] = []
            for _ in range(calls):
                reqs = [
                    _create_request(texts[next_text + j], next_text + j) for j in range(per_call)
                ]
                next_text += per_call
                if per_call == 1:
                    work.append(functools.partial(one, reqs[0]))
                else:
                    batch_request = memory_pb2.BatchCreateMemoriesRequest(requests=reqs)
                    work.append(functools.partial(batch, batch_request))
            cpu0 = (proc_cpu_s(stack.memory.pid), children_cpu_s(stack.postgres.pid))
            latencies, returned, wall, cut = await timed_calls(
                work, concurrency, sizes.phase_bound_s
            )
            cpu1 = (proc_cpu_s(stack.memory.pid), children_cpu_s(stack.postgres.pid))
            items = len(returned)
            merged = sum(1 for m in returned if m.merge_count > 0)
            distinct = len({m.name for m in returned})
            record: JsonDict = {
                "mode": key,
                "items_per_call": per_call,
                "concurrency": concurrency,
                "calls": len(latencies),
                "memories": items,
                "wall_s": round(wall, 3),
                "memories_per_s": round(items / wall, 1) if wall else 0.0,
                "calls_per_s": round(len(latencies) / wall, 1) if wall else 0.0,
                "latency_ms": percentiles_ms(latencies),
                "merged": merged,
                "distinct_names": distinct,
                "cut_by_time_bound": cut,
                "cpu_us_per_memory": {
                    "server": round((cpu1[0] - cpu0[0]) / max(items, 1) * 1e6, 1),
                    "postgres": round((cpu1[1] - cpu0[1]) / max(items, 1) * 1e6, 1),
                },
            }
            if distinct != items:
                problems.append(f"ingest {key}: {items} memories returned, {distinct} distinct")
            results.append(record)
    # Every returned memory must be in the table, exactly once (merged ones included).
    conn = await asyncpg.connect(stack.postgres.database_url)
    try:
        stored = await conn.fetchval(
            "SELECT count(*) FROM memory.memories WHERE tenant = $1", TENANT
        )
        merges = await conn.fetchval(
            "SELECT coalesce(sum(merge_count), 0) FROM memory.memories WHERE tenant = $1", TENANT
        )
    finally:
        await conn.close()
    expected = 20 + sum(r["distinct_names"] for r in results)
    if stored != expected:
        problems.append(f"ingest: {stored} rows stored, {expected} memories created")
    raw = await _database_floor(stack, sizes, texts[next_text:])
    return {
        "modes": results,
        "database_floor": raw,
        "namespaces": INGEST_NAMESPACES,
        "example_text": texts[0],
        "rows_stored": stored,
        "merge_count_sum": merges,
        "problems": problems,
    }


async def _single_write_floor(stack: Stack, texts: Sequence[str], concurrency: int) -> JsonDict:
    """CreateMemory's own statements (the store's ``write_memories``: BEGIN, the
    namespace lock, the near-duplicate lookup, the INSERT, COMMIT) from ``concurrency``
    plain connections, one memory per transaction, vectors computed beforehand: what
    the database alone allows for single writes at that concurrency."""
    embedder = HashEmbedder(DIMENSION)
    items = [
        NewMemory(
            namespace=f"users/u{i % INGEST_NAMESPACES:02d}/notes",
            kind=memory_pb2.MEMORY_KIND_EPISODIC,
            content=text,
            metadata={"source": "bench", "seq": i},
            embedding=embedder.embed_one(text),
            session=None,
            expire_time=None,
            request_id="",
        )
        for i, text in enumerate(texts)
    ]
    pending = list(reversed(items))
    conns = [await asyncpg.connect(stack.postgres.database_url) for _ in range(concurrency)]
    latencies: list[float] = []

    async def writer(conn: asyncpg.Connection) -> None:
        await register_vector(conn)
        while pending:
            item = pending.pop()
            t0 = time.perf_counter()
            async with conn.transaction():
                await write_memories(conn, RAW_TENANT, [item], MERGE_SIMILARITY)
            latencies.append(time.perf_counter() - t0)

    cpu0 = children_cpu_s(stack.postgres.pid)
    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(writer(conn) for conn in conns))
    finally:
        for conn in conns:
            await conn.close()
    wall = time.perf_counter() - t0
    cpu = children_cpu_s(stack.postgres.pid) - cpu0
    return {
        "mode": f"raw-create-{concurrency}",
        "memories": len(items),
        "memories_per_s": round(len(items) / wall, 1),
        "latency_ms": percentiles_ms(latencies),
        "postgres_cpu_us_per_memory": round(cpu / max(len(items), 1) * 1e6, 1),
    }


async def _database_floor(stack: Stack, sizes: Sizes, texts: Sequence[str]) -> JsonDict:
    """The same rows INSERTed straight into memory.memories (same indexes, the HNSW one
    included) from one plain connection, in the batch sizes of the service modes, with
    the vectors computed beforehand and no near-duplicate lookup: what PostgreSQL alone
    costs per memory, beside which the service's batched rate is read."""
    batches = sorted(sizes.ingest_batches.items())
    needed = sum(size * count for size, count in batches)
    embedder = HashEmbedder(DIMENSION)
    # pgvector's Vector, binary-encoded by its codec like the service's; a list of
    # lists (or arrays) would read as a 2-D float array.
    vectors = [Vector(embedder.embed_one(text)) for text in texts[:needed]]
    statement = (
        "INSERT INTO memory.memories (tenant, id, namespace, kind, content, embedding)"
        " SELECT $1, u.id, u.ns, 2, u.content, u.embedding"
        " FROM unnest($2::text[], $3::text[], $4::text[], $5::vector[])"
        " AS u(id, ns, content, embedding)"
    )
    modes: list[JsonDict] = [
        await _single_write_floor(stack, texts[needed : needed + sizes.ingest_concurrent], 16)
    ]
    conn = await asyncpg.connect(stack.postgres.database_url)
    await register_vector(conn)
    done = 0
    try:
        for size, count in batches:
            t0 = time.perf_counter()
            cpu0 = children_cpu_s(stack.postgres.pid)
            for _ in range(count):
                rows = range(done, done + size)
                await conn.execute(
                    statement,
                    RAW_TENANT,
                    [f"raw{i}" for i in rows],
                    [f"users/u{i % INGEST_NAMESPACES:02d}/notes" for i in rows],
                    [texts[i] for i in rows],
                    [vectors[i] for i in rows],
                )
                done += size
            wall = time.perf_counter() - t0
            cpu = children_cpu_s(stack.postgres.pid) - cpu0
            modes.append(
                {
                    "mode": f"raw-insert-{size}",
                    "memories": size * count,
                    "memories_per_s": round(size * count / wall, 1),
                    "postgres_cpu_us_per_memory": round(cpu / (size * count) * 1e6, 1),
                }
            )
        await conn.execute("DELETE FROM memory.memories WHERE tenant = $1", RAW_TENANT)
    finally:
        await conn.close()
    return {"modes": modes}
