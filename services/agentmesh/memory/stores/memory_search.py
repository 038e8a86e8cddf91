"""Semantic search of long-term memories, and what every read of ``memory.memories``
shares: the columns it returns, the liveness condition, the namespace-subtree
condition and the one expression that walks the HNSW index (``nearest``).

Expired memories do not exist for any read: every query adds ``LIVE``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]

from agentmesh.core.sql import Where

VECTOR_COLUMN_DIM: Final = 384
"""Size of ``memory.memories.embedding`` (fixed by the migration)."""
INDEXED: Final = f"embedding::halfvec({VECTOR_COLUMN_DIM})"
"""What the HNSW index holds: each embedding in half precision. Half the index size
and memory traffic of ``vector`` (112 MB against 195 MB at 100k x 384), the same
recall@10 within 0.005 (docs/benchmarks.md); rows keep full precision, and scores are
computed from them. A statement reaches the index only by ordering by exactly
``{INDEXED} <=> <query>::halfvec(dim)``: see ``nearest``."""

INDEXED_ROWS: Final = "indexed"
"""The HNSW index's predicate. A memory an import wrote is stored with ``indexed``
false and joins the index later (``stores/memory_tail.py``); until then reads find it
in the unindexed tail, exactly (``memories_unindexed``, a small partial index)."""

COLUMNS: Final = (
    "id, namespace, kind, content, metadata, session, expire_time,"
    " merge_count, version, create_time, update_time"
)
"""The columns every read returns (all but the embedding)."""
LIVE: Final = "(expire_time IS NULL OR expire_time > now())"
"""Expired memories no longer exist: every read and merge lookup adds this."""


def nearest(query: str) -> str:
    """The ORDER BY expression that walks the HNSW index towards ``query`` (an SQL
    expression of type vector)."""
    return f"{INDEXED} <=> ({query})::halfvec({VECTOR_COLUMN_DIM})"


def like_prefix(namespace: str) -> str:
    """``LIKE`` pattern of everything below ``namespace`` (``_`` is a wildcard to LIKE
    and a legal namespace character, so it is escaped)."""
    return namespace.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "/%"


def namespace_under(where: Where, namespace: str) -> None:
    """Adds the condition: the namespace itself or any path below it, segment-wise."""
    where.add("(namespace = {} OR namespace LIKE {})", namespace, like_prefix(namespace))


@dataclass(frozen=True)
class SearchQuery:
    """A validated SearchMemories request, its vector resolved."""

    vector: list[float]
    namespace_prefix: str
    kinds: tuple[int, ...]
    metadata_filter: str | None
    top_k: int
    min_score: float


def search_sql(tenant: str, query: SearchQuery) -> tuple[str, list[Any]]:
    """The search statement and its parameters (public so tests can EXPLAIN it).

    ORDER BY the distance operator with a LIMIT is what lets the planner walk the
    HNSW index; every filter is a post-filter that ``hnsw.iterative_scan`` keeps
    feeding until ``top_k`` rows pass. The unindexed tail (memories an import wrote
    that the indexer has not reached yet; usually none) is read exactly beside it, so
    a search during a load misses nothing that was acknowledged; the caller keeps the
    best ``top_k`` of both.
    """
    where = Where(tenant)
    where.add(LIVE)
    vector = where.param(query.vector)
    if query.namespace_prefix:
        namespace_under(where, query.namespace_prefix)
    if query.kinds:
        where.add("kind = ANY({}::smallint[])", list(query.kinds))
    if query.metadata_filter is not None:
        where.add("metadata @> {}::jsonb", query.metadata_filter)
    limit = where.param(query.top_k)
    rows = f"SELECT {COLUMNS}, embedding <=> {vector} AS distance FROM memory.memories"
    sql = (
        f"({rows} WHERE {where.sql} AND {INDEXED_ROWS} ORDER BY {nearest(vector)} LIMIT {limit})"
        f" UNION ALL ({rows} WHERE {where.sql} AND NOT {INDEXED_ROWS}"
        f" ORDER BY distance LIMIT {limit})"
    )
    return sql, where.args


async def run_search(
    conn: asyncpg.Connection, tenant: str, query: SearchQuery, ef_search: int
) -> list[tuple[asyncpg.Record, float]]:
    """Runs the search; best first, as (row, score) pairs.

    The pool's connections carry ``memory_index.search_session_settings``, so the
    usual search is one statement. Only a ``top_k`` above ``ef_search`` (which would
    cap the result count) needs a transaction to raise it with ``SET LOCAL``.
    """
    sql, params = search_sql(tenant, query)
    if query.top_k <= ef_search:
        rows = await conn.fetch(sql, *params)
    else:
        async with conn.transaction():
            await conn.execute(
                "SELECT set_config('hnsw.ef_search', $1, true),"
                " set_config('hnsw.iterative_scan', 'relaxed_order', true)",
                str(query.top_k),
            )
            rows = await conn.fetch(sql, *params)
    scored = [(row, max(-1.0, min(1.0, 1.0 - row["distance"]))) for row in rows]
    scored.sort(key=lambda hit: (-hit[1], hit[0]["id"]))
    return [hit for hit in scored[: query.top_k] if hit[1] >= query.min_score]
