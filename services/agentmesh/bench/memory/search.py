"""Part 3, search: SearchMemories latency and recall@10 against the exact top-10, per ef_search."""

from __future__ import annotations

import array
import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import asyncpg  # type: ignore[import-untyped]

from agentmesh.bench.memory.clients import aio_channel, aio_stub, percentiles_ms
from agentmesh.bench.memory.options import (
    DEFAULT_EF_SEARCH,
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    TENANT,
    Sizes,
)
from agentmesh.bench.memory.stack import Stack
from agentmesh.bench.memory_data import (
    DIMENSION,
    INTRINSIC_DIMENSION,
    LowRankVectors,
    Vec,
    chunks,
    exact_top_k,
)
from agentmesh.bench.procs import BenchError, grpc_metadata, handled_ok
from agentmesh.bench.suite import BenchOptions, JsonDict
from agentmesh.memory.stores.memory_search import (
    INDEXED,
    INDEXED_ROWS,
    SearchQuery,
    search_sql,
)
from agentmesh.v1 import memory_pb2

BUILD_WORK_MEM: Final = "1GB"
SEARCH_NAMESPACE: Final = "bench/synthetic"
TOP_K: Final = 10


def _encode_vector(value: Vec) -> bytes:
    """pgvector's binary format: dimension and 0 (uint16 each), then big-endian float32s."""
    out = array.array("f", value)
    if sys.byteorder == "little":
        out.byteswap()
    return len(value).to_bytes(2, "big") + b"\x00\x00" + out.tobytes()


def _decode_vector(data: bytes) -> Vec:
    out = array.array("f")
    out.frombytes(data[4:])
    if sys.byteorder == "little":
        out.byteswap()
    return out


async def _connect(database_url: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(database_url)
    await conn.set_type_codec(
        "vector",
        schema="public",
        encoder=_encode_vector,
        decoder=_decode_vector,
        format="binary",
    )
    return conn


def memory_id(index: int) -> str:
    """Row `index` of the synthetic data: a valid memory id (a letter, then hex)."""
    return f"r{index:032x}"


def index_of(name: str) -> int:
    return int(name.rsplit("/", 1)[-1][1:], 16)


@dataclass
class SearchData:
    queries: list[Vec]
    exact: list[list[int]]
    load: JsonDict
    check_rows: list[Vec] = field(default_factory=list)


def _search_sql() -> str:
    """The service's own search statement (the indexed part and the unindexed tail),
    asked from its module at run time, so the two cannot drift apart; its parameters
    are the tenant, the query vector and top_k."""
    sql, params = search_sql(TENANT, SearchQuery([0.0] * DIMENSION, "", (), None, 10, -1.0))
    if len(params) != 3:
        raise BenchError(f"the search statement takes {len(params)} parameters, expected 3")
    return sql


_EXACT_SQL: Final = (
    "SELECT id FROM memory.memories WHERE tenant = $1"
    " AND (expire_time IS NULL OR expire_time > now())"
    " ORDER BY embedding <=> $2 LIMIT 10"
)
"""Ground truth: full precision, no index (built afterwards), so a sequential scan."""


async def _copy_vectors(
    opts: BenchOptions, conn: asyncpg.Connection, gen: LowRankVectors, count: int
) -> tuple[list[Vec], float, float]:
    """Generates `count` vectors in chunks and COPYs each chunk into memory.memories;
    returns the rows (kept only up to 20,000, for the cross-check), generation and COPY
    seconds."""
    gen_s = copy_s = 0.0
    done = 0
    keep: list[Vec] = []
    stream = gen.stream(count, stream=0)
    while True:
        t0 = time.perf_counter()
        chunk = next(chunks(stream, 5_000), [])
        gen_s += time.perf_counter() - t0
        if not chunk:
            break
        if count <= 20_000:
            keep.extend(chunk)
        records = [
            (TENANT, memory_id(done + i), SEARCH_NAMESPACE, 1, f"synthetic memory {done + i}", v)
            for i, v in enumerate(chunk)
        ]
        t0 = time.perf_counter()
        await conn.copy_records_to_table(
            "memories",
            schema_name="memory",
            columns=["tenant", "id", "namespace", "kind", "content", "embedding"],
            records=records,
        )
        copy_s += time.perf_counter() - t0
        done += len(chunk)
        if done % 20_000 == 0:
            opts.log(f"memory search: {done:,} vectors loaded")
    return keep, gen_s, copy_s


async def _load_search_data(opts: BenchOptions, stack: Stack, sizes: Sizes) -> SearchData:
    """COPY N vectors into memory.memories (index dropped), exact top-10 by a sequential
    scan, then build the HNSW index with maintenance_work_mem = 1GB."""
    gen = LowRankVectors()
    conn = await _connect(stack.postgres.database_url)
    try:
        await conn.execute("SET statement_timeout = 0")
        # This part owns the table: the ingest part's rows go, and so does the index.
        await conn.execute("TRUNCATE memory.memories")
        await conn.execute("DROP INDEX IF EXISTS memory.memories_embedding_hnsw")
        t_load = time.perf_counter()
        keep, gen_s, copy_s = await _copy_vectors(opts, conn, gen, sizes.memories)
        load_s = time.perf_counter() - t_load
        t0 = time.perf_counter()
        await conn.execute("VACUUM ANALYZE memory.memories")
        vacuum_s = time.perf_counter() - t0
        queries = gen.sample(sizes.queries, stream=1)
        # Ground truth: the same ORDER BY with no index is an exact (sequential) scan.
        exact: list[list[int]] = []
        exact_latency: list[float] = []
        for q in queries:
            t0 = time.perf_counter()
            rows = await conn.fetch(_EXACT_SQL, TENANT, q)
            exact_latency.append(time.perf_counter() - t0)
            exact.append([index_of(r["id"]) for r in rows])
        await conn.execute(f"SET maintenance_work_mem = '{BUILD_WORK_MEM}'")
        t0 = time.perf_counter()
        await conn.execute(
            "CREATE INDEX memories_embedding_hnsw ON memory.memories"
            f" USING hnsw (({INDEXED}) halfvec_cosine_ops)"
            f" WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"
            f" WHERE {INDEXED_ROWS}"
        )
        build_s = time.perf_counter() - t0
        workers = await conn.fetchval("SHOW max_parallel_maintenance_workers")
        sizes_row = await conn.fetchrow(
            "SELECT pg_total_relation_size('memory.memories') AS total,"
            " pg_relation_size('memory.memories_embedding_hnsw') AS hnsw,"
            " (SELECT count(*) FROM memory.memories) AS n"
        )
        await conn.execute("RESET maintenance_work_mem")
    finally:
        await conn.close()
    if sizes_row["n"] != sizes.memories:
        raise BenchError(f"{sizes_row['n']} rows in memory.memories, loaded {sizes.memories}")
    return SearchData(
        queries=queries,
        exact=exact,
        check_rows=keep,
        load={
            "memories": sizes.memories,
            "queries": sizes.queries,
            "generate_s": round(gen_s, 2),
            "copy_s": round(copy_s, 2),
            "load_wall_s": round(load_s, 2),
            "vacuum_analyze_s": round(vacuum_s, 2),
            "index_build_s": round(build_s, 2),
            "maintenance_work_mem": BUILD_WORK_MEM,
            "max_parallel_maintenance_workers": workers,
            "hnsw": {"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION},
            "table_total_mb": round(sizes_row["total"] / 2**20, 1),
            "hnsw_index_mb": round(sizes_row["hnsw"] / 2**20, 1),
            "exact_scan_ms": percentiles_ms(exact_latency),
        },
    )


def _cross_check_exact(data: SearchData) -> list[str]:
    """The database's exact scan against a pure-Python exact scan, on a few queries."""
    if not data.check_rows:
        return []
    problems = []
    for qi in range(min(3, len(data.queries))):
        mine = exact_top_k(data.check_rows, data.queries[qi], TOP_K)
        overlap = len(set(mine) & set(data.exact[qi]))
        # float32 in the database vs float64 here: a near-tie at rank 10 may swap.
        if overlap < TOP_K - 1:
            problems.append(f"exact scan of query {qi}: only {overlap}/10 agree with Python")
    return problems


def _recall(found: Sequence[Sequence[int]], exact: Sequence[Sequence[int]]) -> float:
    hits = sum(len(set(f) & set(e[:TOP_K])) for f, e in zip(found, exact, strict=True))
    return hits / (TOP_K * len(exact))


async def _search_service(
    stack: Stack, token: str, data: SearchData, sizes: Sizes
) -> tuple[JsonDict, list[str]]:
    """SearchMemories over direct gRPC: a warm-up pass, sequential passes (1 in flight),
    then `sizes.concurrent` in flight; recall@10 from the first measured pass."""
    md = grpc_metadata(token, "bench-memory-search")
    problems: list[str] = []
    requests = [
        memory_pb2.SearchMemoriesRequest(vector=memory_pb2.Vector(values=q), top_k=TOP_K)
        for q in data.queries
    ]
    before_ok = handled_ok(stack.ports.metrics_memory, "SearchMemories")
    calls = 0
    async with aio_channel(stack.memory_address) as channel:
        stub = aio_stub(channel)

        async def search(i: int) -> memory_pb2.SearchMemoriesResponse:
            response: memory_pb2.SearchMemoriesResponse = await stub.SearchMemories(
                requests[i], metadata=md, timeout=30.0
            )
            return response

        # Pre-check: ten hits, best first, scores = cosine with the query.
        first = await search(0)
        calls += 1
        scores = [hit.score for hit in first.results]
        if len(first.results) != TOP_K or scores != sorted(scores, reverse=True):
            raise BenchError(f"SearchMemories returned {len(first.results)} hits, scores {scores}")
        for i in range(len(requests)):  # warm-up pass (also warms PostgreSQL's cache)
            await search(i)
            calls += 1
        deadline = time.monotonic() + sizes.phase_bound_s
        sequential: list[float] = []
        found: list[list[int]] = []
        cut = False
        for p in range(sizes.search_passes):
            for i in range(len(requests)):
                if time.monotonic() > deadline:
                    cut = True
                    break
                t0 = time.perf_counter()
                response = await search(i)
                sequential.append(time.perf_counter() - t0)
                calls += 1
                if p == 0:
                    found.append([index_of(hit.memory.name) for hit in response.results])
        recall = _recall(found, data.exact[: len(found)])
        # Concurrent: `concurrent` workers over the same passes of queries.
        order = [i for _ in range(sizes.search_passes) for i in range(len(requests))]
        concurrent: list[float] = []
        pending = list(reversed(order))

        async def worker() -> None:
            nonlocal calls
            while pending and time.monotonic() < deadline + sizes.phase_bound_s:
                i = pending.pop()
                t0 = time.perf_counter()
                await search(i)
                concurrent.append(time.perf_counter() - t0)
                calls += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(sizes.concurrent)))
        concurrent_wall = time.perf_counter() - t0
    grown = handled_ok(stack.ports.metrics_memory, "SearchMemories") - before_ok
    if grown != calls:
        problems.append(f"search: server counted {grown:.0f} OK SearchMemories, sent {calls}")
    if len(found) < len(requests):
        problems.append(f"search: recall measured on {len(found)} of {len(requests)} queries")
    return (
        {
            "recall_at_10": round(recall, 4),
            "sequential_ms": percentiles_ms(sequential),
            "concurrent": {
                "in_flight": sizes.concurrent,
                "latency_ms": percentiles_ms(concurrent),
                "qps": round(len(concurrent) / concurrent_wall, 1) if concurrent_wall else 0.0,
            },
            "cut_by_time_bound": cut,
            "calls": calls,
            "server_handled_ok_delta": grown,
            "first_hit_score": round(scores[0], 4),
        },
        problems,
    )


async def _search_database(stack: Stack, data: SearchData, ef_search: int, passes: int) -> JsonDict:
    """The service's statement shape on a plain connection (no gRPC, no Python service):
    the database's share of a search's latency."""
    conn = await _connect(stack.postgres.database_url)
    latencies: list[float] = []
    found: list[list[int]] = []
    statement = _search_sql()
    try:
        # Session settings, as the service's pool sets them: one statement per search.
        await conn.execute(
            "SELECT set_config('hnsw.ef_search', $1, false),"
            " set_config('hnsw.iterative_scan', 'relaxed_order', false)",
            str(ef_search),
        )
        for p in range(passes + 1):  # the first pass warms up
            for q in data.queries:
                t0 = time.perf_counter()
                rows = await conn.fetch(statement, TENANT, q, 10)
                if p:
                    latencies.append(time.perf_counter() - t0)
                if p == 1:
                    found.append([index_of(r["id"]) for r in rows])
    finally:
        await conn.close()
    return {
        "latency_ms": percentiles_ms(latencies),
        "recall_at_10": round(_recall(found, data.exact), 4),
    }


def run_search(
    opts: BenchOptions, stack: Stack, token: str, sizes: Sizes, ef_search: Sequence[int]
) -> JsonDict:
    opts.log(
        f"memory search: generating and loading {sizes.memories:,} vectors of {DIMENSION} dims "
        f"(intrinsic dimension {INTRINSIC_DIMENSION})"
    )
    data = asyncio.run(_load_search_data(opts, stack, sizes))
    load = data.load
    opts.log(
        f"memory search: generated in {load['generate_s']:.1f} s, COPY {load['copy_s']:.1f} s, "
        f"HNSW build {load['index_build_s']:.1f} s ({load['hnsw_index_mb']:.0f} MB), exact scan "
        f"p50 {load['exact_scan_ms'].get('p50', 0):.1f} ms"
    )
    problems = _cross_check_exact(data)
    per_ef: list[JsonDict] = []
    for ef in ef_search:
        stack.start_memory(ef)
        service, found_problems = asyncio.run(_search_service(stack, token, data, sizes))
        database = asyncio.run(_search_database(stack, data, ef, max(1, sizes.search_passes // 2)))
        problems += [f"ef_search {ef}: {p}" for p in found_problems]
        record = {"ef_search": ef, "service": service, "database": database}
        per_ef.append(record)
        seq = service["sequential_ms"]
        opts.log(
            f"memory search ef_search {ef}: recall@10 {service['recall_at_10']:.3f}, "
            f"p50 {seq.get('p50', 0):.2f} ms, p99 {seq.get('p99', 0):.2f} ms "
            f"(database alone p50 {database['latency_ms'].get('p50', 0):.2f} ms); "
            f"{sizes.concurrent} in flight {service['concurrent']['qps']:.0f} q/s"
        )
    if DEFAULT_EF_SEARCH not in ef_search or stack.ef_search != DEFAULT_EF_SEARCH:
        stack.start_memory(DEFAULT_EF_SEARCH)
    return {"load": load, "per_ef_search": per_ef, "problems": problems}
