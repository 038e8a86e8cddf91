"""Part 5, bulk import: ImportMemories at `sizes.import_memories` × 384 dimensions, beside
the same run's database floors.

1. Floors, with the Memory service stopped (its indexer must not touch these rows): the
   same rows COPYed by one plain connection in the same slices, each its own
   transaction (the floor of an acknowledged import); then the indexer's own statement
   run by plain connections, as many as the service's indexer runs, until all of them are
   indexed (the floor of indexing: the same index sizes as ours goes through). The raw
   rows are deleted and vacuumed away afterwards.
2. Ours: the service (default settings, its indexer on) takes the same number of
   memories in slices of IMPORT_SLICE with vectors, IMPORT_CLIENTS slices in flight.
3. Right after the last slice is acknowledged, while most of it still waits for the
   index, sampled imported memories are searched by their own vectors: each must be its
   own best hit (search is correct during the load).
4. The indexer's catch-up: how long until no imported memory waits for the index.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

import asyncpg  # type: ignore[import-untyped]
from pgvector import Vector
from pgvector.asyncpg import register_vector

from agentmesh.bench.memory.clients import aio_channel, aio_stub, percentiles_ms
from agentmesh.bench.memory.options import DEFAULT_EF_SEARCH, Sizes
from agentmesh.bench.memory.stack import Stack, children_cpu_s
from agentmesh.bench.memory_data import DIMENSION, LowRankVectors
from agentmesh.bench.procs import grpc_metadata, proc_cpu_s
from agentmesh.bench.suite import JsonDict
from agentmesh.core.auth import mint_token
from agentmesh.memory.settings import MemorySettings
from agentmesh.memory.stores.memory_tail import IMPORT_COLUMNS, index_tail
from agentmesh.v1 import memory_pb2

IMPORT_TENANT: Final = "bench-import"
RAW_TENANT: Final = "bench-import-raw"
IMPORT_SLICE: Final = 1000
IMPORT_CLIENTS: Final = 2
IMPORT_NAMESPACES: Final = 20
SEARCH_SAMPLES: Final = 20
WAIT_INDEXED_S: Final = 900.0


def _vectors(count: int) -> list[list[float]]:
    vectors: list[list[float]] = []
    for vector in LowRankVectors().stream(count, stream=3):
        vectors.append(list(vector))
    return vectors


def _namespace(i: int) -> str:
    return f"corpus/n{i % IMPORT_NAMESPACES:02d}"


async def _copy_floor(conn: asyncpg.Connection, vectors: list[list[float]]) -> JsonDict:
    """The same rows COPYed slice by slice, one transaction each, by a plain connection."""
    now = await conn.fetchval("SELECT now()")
    t0 = time.perf_counter()
    for start in range(0, len(vectors), IMPORT_SLICE):
        records = [
            (
                RAW_TENANT,
                f"raw{start + i}",
                _namespace(start + i),
                1,
                f"imported memory {start + i}",
                "{}",
                Vector(vector),
                None,
                None,
                0,
                now,
                now,
                False,
            )
            for i, vector in enumerate(vectors[start : start + IMPORT_SLICE])
        ]
        async with conn.transaction():
            await conn.copy_records_to_table(
                "memories", schema_name="memory", columns=IMPORT_COLUMNS, records=records
            )
    wall = time.perf_counter() - t0
    return {
        "memories": len(vectors),
        "wall_s": round(wall, 2),
        "memories_per_s": round(len(vectors) / wall, 1),
    }


async def _index_floor(stack: Stack, concurrency: int, batch: int, limit: int) -> JsonDict:
    """The indexer's statement from ``concurrency`` plain connections until ``limit`` rows
    are indexed (or none wait)."""
    done = 0
    conns = [await asyncpg.connect(stack.postgres.database_url) for _ in range(concurrency)]
    cpu0 = children_cpu_s(stack.postgres.pid)
    t0 = time.perf_counter()

    async def loop(conn: asyncpg.Connection) -> None:
        nonlocal done
        while done < limit:
            got = await index_tail(conn, limit=batch)
            done += got
            if got < batch:
                return

    try:
        await asyncio.gather(*(loop(conn) for conn in conns))
    finally:
        for conn in conns:
            await conn.close()
    wall = time.perf_counter() - t0
    cpu = children_cpu_s(stack.postgres.pid) - cpu0
    return {
        "memories": done,
        "connections": concurrency,
        "batch": batch,
        "wall_s": round(wall, 2),
        "memories_per_s": round(done / wall, 1) if wall else 0.0,
        "postgres_cpu_us_per_memory": round(cpu / max(done, 1) * 1e6, 1),
    }


async def _floors(stack: Stack, vectors: list[list[float]], settings: MemorySettings) -> JsonDict:
    conn = await asyncpg.connect(stack.postgres.database_url)
    await register_vector(conn)
    try:
        copy = await _copy_floor(conn, vectors)
        index = await _index_floor(
            stack,
            settings.indexer_concurrency,
            settings.indexer_batch_size,
            len(vectors),
        )
        await conn.execute("DELETE FROM memory.memories WHERE tenant = $1", RAW_TENANT)
        await conn.execute("VACUUM memory.memories")
    finally:
        await conn.close()
    return {"copy": copy, "index": index}


def _slice(vectors: list[list[float]], start: int) -> memory_pb2.ImportMemoriesRequest:
    return memory_pb2.ImportMemoriesRequest(
        memories=[
            memory_pb2.Memory(
                namespace=_namespace(start + i),
                kind=memory_pb2.MEMORY_KIND_SEMANTIC,
                content=f"imported memory {start + i}",
                embedding=vector,
            )
            for i, vector in enumerate(vectors[start : start + IMPORT_SLICE])
        ],
        request_id=f"bench-slice-{start}",
    )


async def _waiting(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM memory.memories WHERE tenant = $1 AND NOT indexed", IMPORT_TENANT
    )
    return count


async def _ours(stack: Stack, token: str, vectors: list[list[float]]) -> tuple[JsonDict, list[str]]:
    assert stack.memory is not None
    md = grpc_metadata(token, "bench-memory-import")
    # Built beforehand: the client's protobuf work is not the server's time.
    requests = [(start, _slice(vectors, start)) for start in range(0, len(vectors), IMPORT_SLICE)]
    pending = list(reversed(requests))
    latencies: list[float] = []
    names = [""] * len(vectors)
    problems: list[str] = []
    conn = await asyncpg.connect(stack.postgres.database_url)
    async with aio_channel(stack.memory_address) as channel:
        stub = aio_stub(channel)

        async def client() -> None:
            while pending:
                start, request = pending.pop()
                t0 = time.perf_counter()
                response = await stub.ImportMemories(request, metadata=md, timeout=120.0)
                latencies.append(time.perf_counter() - t0)
                names[start : start + len(response.names)] = response.names

        cpu0 = (proc_cpu_s(stack.memory.pid), children_cpu_s(stack.postgres.pid))
        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(IMPORT_CLIENTS)))
        acknowledged_s = time.perf_counter() - t0
        cpu1 = (proc_cpu_s(stack.memory.pid), children_cpu_s(stack.postgres.pid))
        waiting_at_ack = await _waiting(conn)
        # Search during the load: each sampled memory is its own best hit.
        step = max(1, len(vectors) // SEARCH_SAMPLES)
        found = 0
        for i in range(0, len(vectors), step)[:SEARCH_SAMPLES]:
            response = await stub.SearchMemories(
                memory_pb2.SearchMemoriesRequest(
                    vector=memory_pb2.Vector(values=vectors[i]), top_k=1
                ),
                metadata=md,
                timeout=30.0,
            )
            found += bool(response.results) and response.results[0].memory.name == names[i]
        searched = len(range(0, len(vectors), step)[:SEARCH_SAMPLES])
        if found != searched:
            problems.append(f"import: {found} of {searched} sampled memories found by search")
        for _ in range(int(WAIT_INDEXED_S / 0.2)):  # bounded: the problem is recorded
            if not await _waiting(conn):
                break
            await asyncio.sleep(0.2)
        indexed_s = time.perf_counter() - t0
        left = await _waiting(conn)
        cpu2 = (proc_cpu_s(stack.memory.pid), children_cpu_s(stack.postgres.pid))
    stored = await conn.fetchval(
        "SELECT count(*) FROM memory.memories WHERE tenant = $1", IMPORT_TENANT
    )
    await conn.close()
    if left:
        problems.append(f"import: {left} memories still unindexed after {WAIT_INDEXED_S:.0f} s")
    if stored != len(vectors):
        problems.append(f"import: {stored} rows stored, {len(vectors)} sent")
    n = len(vectors)
    result: JsonDict = {
        "memories": n,
        "slice": IMPORT_SLICE,
        "clients": IMPORT_CLIENTS,
        "acknowledged_s": round(acknowledged_s, 2),
        "memories_per_s": round(n / acknowledged_s, 1),
        "slice_latency_ms": percentiles_ms(latencies),
        "cpu_us_per_memory": {
            "server": round((cpu1[0] - cpu0[0]) / n * 1e6, 1),
            "postgres": round((cpu1[1] - cpu0[1]) / n * 1e6, 1),
        },
        "waiting_for_index_at_ack": waiting_at_ack,
        "search_found_during_load": f"{found}/{searched}",
        "all_indexed_s": round(indexed_s, 2),
        "indexed_per_s": round(n / indexed_s, 1),
        "indexer_postgres_cpu_us_per_memory": round((cpu2[1] - cpu1[1]) / n * 1e6, 1),
        "rows_stored": stored,
    }
    return result, problems


async def run_bulk(stack: Stack, sizes: Sizes) -> JsonDict:
    """The bulk import part (see the module docstring), as tenant IMPORT_TENANT; the
    Memory service is restarted with its default import settings after the floors."""
    token = mint_token(stack.secret, IMPORT_TENANT, subject="bench", ttl_s=6 * 3600)
    vectors = _vectors(sizes.import_memories)
    settings = MemorySettings()
    stack.stop_memory()
    floors = await _floors(stack, vectors, settings)
    stack.start_memory(DEFAULT_EF_SEARCH)
    ours, problems = await _ours(stack, token, vectors)
    copy_rate = floors["copy"]["memories_per_s"]
    return {
        "ours": ours,
        "floors": floors,
        "ours_over_copy_floor": round(ours["memories_per_s"] / copy_rate, 3) if copy_rate else None,
        "indexed_over_index_floor": round(
            ours["indexed_per_s"] / floors["index"]["memories_per_s"], 3
        )
        if floors["index"]["memories_per_s"]
        else None,
        "dimension": DIMENSION,
        "problems": problems,
    }
