"""The unindexed tail of long-term memories: what a bulk import writes, and the
indexer that adds it to the HNSW index.

Inserting into the HNSW index costs PostgreSQL 1-2 ms of CPU per row at 10-100k rows
(docs/benchmarks.md), which caps synchronous writes near 500 rows/s on two cores. An
import therefore stores its rows with ``COPY`` and ``indexed`` false: durable and
visible at commit, outside the (partial, ``WHERE indexed``) HNSW index. Reads find
them exactly: searches and near-duplicate lookups read the tail beside the index
(``memory_search.search_sql``, ``memories._nearest_existing``). The indexer, a
background task of every replica (``memory/indexer.py``), then flips ``indexed`` in
small batches, oldest first, and each flipped row joins the index.

``import_rows`` and ``unindexed_count`` take the tenant first; ``index_tail`` is
housekeeping of the whole table and takes none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import asyncpg  # type: ignore[import-untyped]
from pgvector import Vector

from agentmesh.memory.domain.merging import NewMemory, merged_fields
from agentmesh.memory.stores.memory_search import INDEXED_ROWS

IMPORT_COLUMNS: Final = (
    "tenant",
    "id",
    "namespace",
    "kind",
    "content",
    "metadata",
    "embedding",
    "session",
    "expire_time",
    "merge_count",
    "create_time",
    "update_time",
    "indexed",
)


async def import_rows(
    conn: asyncpg.Connection, tenant: str, groups: Mapping[str, Sequence[NewMemory]]
) -> None:
    """Stores one memory per id of ``groups`` (each from the items merged into it),
    unindexed, with one binary ``COPY`` inside the caller's transaction.

    Creation times are the transaction's time plus one microsecond per row, so a
    slice lists in request order (newest first: its last item first) and two slices
    of one import in the order they were committed.
    """
    start: datetime = await conn.fetchval("SELECT now()")
    records = []
    for offset, (memory_id, group) in enumerate(groups.items()):
        merged = merged_fields(group)
        when = start + timedelta(microseconds=offset)
        embedding = merged["embedding"]
        if embedding is None:  # the RPC embeds every item before any write
            raise AssertionError("a memory reached the database without its embedding")
        records.append(
            (
                tenant,
                memory_id,
                group[0].namespace,
                group[0].kind,
                merged["content"],
                merged["metadata"],
                Vector(embedding),
                merged["session"],
                merged["expire_time"],
                len(group) - 1,
                when,
                when,
                False,
            )
        )
    await conn.copy_records_to_table(
        "memories", schema_name="memory", columns=IMPORT_COLUMNS, records=records
    )


async def unindexed_count(db: asyncpg.Pool | asyncpg.Connection, tenant: str, cap: int) -> int:
    """How many of the tenant's memories wait for the index, counted up to ``cap`` + 1
    (an index-only walk of the partial index, bounded whatever the tail holds)."""
    count: int = await db.fetchval(
        "SELECT count(*) FROM (SELECT 1 FROM memory.memories"
        f" WHERE tenant = $1 AND NOT {INDEXED_ROWS} LIMIT $2) AS waiting",
        tenant,
        cap + 1,
    )
    return count


async def index_tail(db: asyncpg.Pool | asyncpg.Connection, *, limit: int) -> int:
    """Adds up to ``limit`` of the oldest unindexed memories of every tenant to the
    HNSW index (one statement, one transaction); returns how many.

    Rows another indexer holds are skipped (``SKIP LOCKED``), so replicas index
    side by side; a row locked by an update or delete is taken by a later batch.
    Neither the version nor the update time changes: indexing is not an edit.
    """
    indexed: int = await db.fetchval(
        f"""
        WITH batch AS (
            SELECT tenant, id FROM memory.memories WHERE NOT {INDEXED_ROWS}
            ORDER BY create_time LIMIT $1 FOR UPDATE SKIP LOCKED
        ), done AS (
            UPDATE memory.memories AS m SET {INDEXED_ROWS} = true
            FROM batch WHERE m.tenant = batch.tenant AND m.id = batch.id
            RETURNING 1
        )
        SELECT count(*) FROM done
        """,
        limit,
    )
    return indexed


def oldest_wait_s(oldest: datetime | None) -> float:
    """Seconds the oldest unindexed memory has waited (0 with none): the indexer's lag."""
    if oldest is None:
        return 0.0
    return max(0.0, (datetime.now(UTC) - oldest).total_seconds())


async def oldest_unindexed(db: asyncpg.Pool | asyncpg.Connection) -> datetime | None:
    """Creation time of the oldest unindexed memory of any tenant, or None."""
    oldest: datetime | None = await db.fetchval(
        f"SELECT min(create_time) FROM memory.memories WHERE NOT {INDEXED_ROWS}"
    )
    return oldest
