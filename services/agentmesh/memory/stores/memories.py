"""Storage of long-term memories: writes with near-duplicate merging, get, list,
update, delete, and the janitor's purge of expired memories.

A write whose vector is within the merge similarity of a live memory in the same
tenant and namespace updates that memory instead of adding a copy
(``domain/merging.py`` decides which). A transaction-level advisory lock per
(tenant, namespace) serialises the look-then-write, so two concurrent near-duplicates
cannot both insert. Expired memories do not exist for any read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]
from pgvector import Vector

from agentmesh.core.names import new_id
from agentmesh.core.offload import convert_sized
from agentmesh.core.sql import (
    PAGE_ITEM_BYTES,
    ROW_OVERHEAD_BYTES,
    Where,
    byte_budgeted,
    delete_batch,
)
from agentmesh.memory.domain.merging import (
    MergeTarget,
    NewMemory,
    merged_fields,
    plan_merges,
    similar_earlier,
)
from agentmesh.memory.stores.memory_search import (
    COLUMNS,
    INDEXED_ROWS,
    LIVE,
    namespace_under,
    nearest,
)

MERGE_EF_SEARCH: Final = 20
"""``hnsw.ef_search`` of the near-duplicate lookup (see _lock_namespaces)."""
MERGE_MAX_SCAN_TUPLES: Final = 2000
"""``hnsw.max_scan_tuples`` of the near-duplicate lookup: how far its index walk may
go to find a row of the namespace before it gives up (see _nearest_existing)."""
EXACT_NAMESPACE_MAX: Final = 300
"""A namespace of at most this many memories is checked for near-duplicates exactly
(see _nearest_existing)."""
_MERGED_COLUMNS: Final = ", ".join("m." + column.strip() for column in COLUMNS.split(","))
"""``COLUMNS`` of the row aliased ``m`` (the UPDATE of a merge joins another relation)."""

_ITEM_BYTES: Final = f"octet_length(content) + octet_length(metadata::text) + {ROW_OVERHEAD_BYTES}"
"""A memory's size estimate in a page."""

# -------------------------------------------------------------- writes


def _vectors(values: Iterable[list[float] | None]) -> list[Vector]:
    # asyncpg reads a list of lists as a 2-D array of floats; a list of Vector
    # objects is the 1-D vector[] the statements expect.
    vectors = []
    for value in values:
        if value is None:  # the create RPCs embed every item before any write
            raise AssertionError("a memory reached the database without its embedding")
        vectors.append(Vector(value))
    return vectors


def _lock_key(tenant: str, namespace: str) -> str:
    return f"memory.memories\x1f{tenant}\x1f{namespace}"


async def _lock_namespaces(
    conn: asyncpg.Connection, tenant: str, namespaces: Iterable[str]
) -> None:
    """Locks the namespaces for the transaction and sets its near-duplicate lookup's
    index walk, in one round trip.

    ``enable_sort`` off (for this transaction) is what makes the lookup of a large
    namespace walk the index: the namespace is a parameter, so the planner cannot know
    its size and, estimating a hundred rows, would rather read them all through the
    namespace index and sort them (5-6 ms at 2,000 rows, against 0.2 ms for the walk).
    ``_nearest_existing`` counts the rows itself and gates each plan on the count; with
    sorting priced out, the gated index branch walks the HNSW index, while the exact
    branches, which no other plan can order, still sort. No other statement of a write
    needs a sort. The generic plan is forced too: the plan no longer depends on the
    values, and PostgreSQL otherwise re-planned the lookup on two calls in three
    (0.6 ms each, measured with pg_stat_statements).

    Sorted, so two batches touching the same namespaces cannot deadlock (unnest yields
    the array in order and the scan calls the volatile lock function row by row, in
    that order). The one-nearest lookup walks the index in exact order with a small
    beam: a near-duplicate (similarity >= the threshold, 0.95 by default) lies far
    closer than anything else, so a beam of MERGE_EF_SEARCH finds it at a fraction of
    the search beam's cost: at 20k rows in 20 namespaces, 0.24 ms per item and 500 of
    500 planted near-duplicates (similarity 0.967-0.99) found; ef 40 costs 0.40 ms.
    """
    keys = [_lock_key(tenant, namespace) for namespace in sorted(set(namespaces))]
    await conn.execute(
        "SELECT set_config('hnsw.iterative_scan', 'strict_order', true),"
        " set_config('hnsw.ef_search', $2, true),"
        " set_config('hnsw.max_scan_tuples', $3, true),"
        " set_config('enable_sort', 'off', true),"
        " set_config('plan_cache_mode', 'force_generic_plan', true),"
        " (SELECT count(*) FROM (SELECT pg_advisory_xact_lock(hashtextextended(k, 0))"
        " FROM unnest($1::text[]) AS k) AS locked)",
        keys,
        str(MERGE_EF_SEARCH),
        str(MERGE_MAX_SCAN_TUPLES),
    )


async def _nearest_existing(
    conn: asyncpg.Connection, tenant: str, items: Sequence[NewMemory], threshold: float
) -> dict[int, tuple[str, float]]:
    """For each item, its most similar live memory in its namespace, if similar enough.

    The plan is chosen per namespace, by its size (counted up to
    EXACT_NAMESPACE_MAX + 1 rows in the namespace index, a few microseconds):

    * a small namespace is compared exactly, row by row: the index walk would have to
      step over the rest of the tenant's and every other tenant's rows to reach it;
    * a large one walks the HNSW index with the narrow beam of ``_lock_namespaces``,
      never further than MERGE_MAX_SCAN_TUPLES tuples (no exact scan of a large
      namespace, whatever the table holds), plus the namespace's unindexed tail
      (what an import wrote and the indexer has not reached yet), exactly.

    Each branch is gated on the count (a one-time filter per item), so only one plan
    runs per item; the best candidate of the branches wins.
    """
    rows = await conn.fetch(
        f"""
        SELECT q.ord, m.id, 1 - (m.embedding <=> q.v) AS similarity
        FROM unnest($2::vector[], $3::text[]) WITH ORDINALITY AS q(v, ns, ord)
        CROSS JOIN LATERAL (
            SELECT count(*) AS n FROM (
                SELECT 1 FROM memory.memories WHERE tenant = $1 AND namespace = q.ns
                LIMIT {EXACT_NAMESPACE_MAX + 1}
            ) AS counted
        ) AS size
        CROSS JOIN LATERAL (
            (SELECT id, embedding FROM memory.memories
             WHERE tenant = $1 AND namespace = q.ns AND {LIVE}
                AND size.n <= {EXACT_NAMESPACE_MAX}
             ORDER BY embedding <=> q.v LIMIT 1)
            UNION ALL
            (SELECT id, embedding FROM memory.memories
             WHERE tenant = $1 AND namespace = q.ns AND {LIVE} AND {INDEXED_ROWS}
                AND size.n > {EXACT_NAMESPACE_MAX}
             ORDER BY {nearest("q.v")} LIMIT 1)
            UNION ALL
            (SELECT id, embedding FROM memory.memories
             WHERE tenant = $1 AND namespace = q.ns AND {LIVE} AND NOT {INDEXED_ROWS}
                AND size.n > {EXACT_NAMESPACE_MAX}
             ORDER BY embedding <=> q.v LIMIT 1)
        ) AS m
        WHERE 1 - (m.embedding <=> q.v) >= $4
        """,
        tenant,
        _vectors(item.embedding for item in items),
        [item.namespace for item in items],
        threshold,
    )
    best: dict[int, tuple[str, float]] = {}
    for row in rows:
        j = row["ord"] - 1
        if j not in best or row["similarity"] > best[j][1]:
            best[j] = (row["id"], row["similarity"])
    return best


async def _insert(
    conn: asyncpg.Connection, tenant: str, new: dict[str, Sequence[NewMemory]]
) -> dict[str, asyncpg.Record]:
    """Inserts one memory per id of ``new`` from the writes merged into it."""
    if not new:
        return {}
    groups = list(new.values())
    merged = [merged_fields(group) for group in groups]
    # clock_timestamp(), not now(): rows of one batch get distinct, increasing
    # creation times, so "newest first" keeps the batch's order stable. It is read
    # once per row (the LATERAL refers to the row, so it is evaluated per row) and
    # used for both columns: two calls would differ by a microsecond.
    rows = await conn.fetch(
        f"""
            INSERT INTO memory.memories (tenant, id, namespace, kind, content, metadata,
                embedding, session, expire_time, merge_count, create_time, update_time)
            SELECT $1, u.id, u.namespace, u.kind, u.content, u.metadata, u.embedding,
                u.session, u.expire_time, u.merges, t.now, t.now
            FROM unnest($2::text[], $3::text[], $4::smallint[], $5::text[], $6::jsonb[],
                $7::vector[], $8::text[], $9::timestamptz[], $10::int[])
                AS u(id, namespace, kind, content, metadata, embedding, session,
                     expire_time, merges)
            CROSS JOIN LATERAL (SELECT clock_timestamp() AS now, u.id AS row_id) AS t
            RETURNING {COLUMNS}
            """,
        tenant,
        list(new),
        [group[0].namespace for group in groups],
        [group[0].kind for group in groups],
        [m["content"] for m in merged],
        [m["metadata"] for m in merged],
        _vectors(m["embedding"] for m in merged),
        [m["session"] for m in merged],
        [m["expire_time"] for m in merged],
        [len(group) - 1 for group in groups],
    )
    return {row["id"]: row for row in rows}


async def _merge_into(
    conn: asyncpg.Connection, tenant: str, existing: dict[str, Sequence[NewMemory]]
) -> dict[str, asyncpg.Record]:
    """Applies merged writes to existing memories; a memory deleted meanwhile is
    missing from the result."""
    if not existing:
        return {}
    groups = list(existing.values())
    merged = [merged_fields(group) for group in groups]
    rows = await conn.fetch(
        f"""
            UPDATE memory.memories AS m SET
                content = u.content, embedding = u.embedding,
                metadata = m.metadata || u.metadata,
                session = COALESCE(u.session, m.session), expire_time = u.expire_time,
                merge_count = m.merge_count + u.merges, version = m.version + 1,
                update_time = clock_timestamp()
            FROM unnest($2::text[], $3::text[], $4::vector[], $5::jsonb[], $6::text[],
                $7::timestamptz[], $8::int[])
                AS u(id, content, embedding, metadata, session, expire_time, merges)
            WHERE m.tenant = $1 AND m.id = u.id
            RETURNING {_MERGED_COLUMNS}
            """,
        tenant,
        list(existing),
        [m["content"] for m in merged],
        _vectors(m["embedding"] for m in merged),
        [m["metadata"] for m in merged],
        [m["session"] for m in merged],
        [m["expire_time"] for m in merged],
        [len(group) for group in groups],
    )
    return {row["id"]: row for row in rows}


async def write_memories(
    conn: asyncpg.Connection, tenant: str, items: Sequence[NewMemory], threshold: float
) -> list[asyncpg.Record]:
    """Inserts or merges ``items`` (embedded) inside the caller's transaction; returns
    the resulting row of each item, in order."""
    if not items:
        return []
    await _lock_namespaces(conn, tenant, (item.namespace for item in items))
    existing = await _nearest_existing(conn, tenant, items, threshold)
    # Pairs within the batch: one matrix product per namespace, the same rule imports use.
    earlier = await convert_sized(
        lambda: similar_earlier(
            [item.embedding or [] for item in items], [item.namespace for item in items], threshold
        ),
        len(items) * len(items[0].embedding or ()) * 4,
    )
    targets, target_of = plan_merges(len(items), existing, earlier)
    rows = await _apply_plan(conn, tenant, items, targets)
    return [rows[target_of[j]] for j in range(len(items))]


async def _apply_plan(
    conn: asyncpg.Connection, tenant: str, items: Sequence[NewMemory], targets: list[MergeTarget]
) -> dict[int, asyncpg.Record]:
    """Runs the planned updates and inserts; returns each target's resulting row."""
    groups = {
        t: [items[j] for j in target.items] for t, target in enumerate(targets) if target.items
    }
    to_update = {targets[t].existing_id: t for t in groups if targets[t].existing_id}
    updated = await _merge_into(
        conn, tenant, {mid: groups[t] for mid, t in to_update.items() if mid}
    )
    rows = {t: updated[mid] for mid, t in to_update.items() if mid in updated}
    # New memories, plus any merge target deleted since the lookup (rare race).
    to_insert = {new_id(): t for t in groups if t not in rows}
    inserted = await _insert(conn, tenant, {mid: groups[t] for mid, t in to_insert.items()})
    rows.update({t: inserted[mid] for mid, t in to_insert.items()})
    return rows


# --------------------------------------------------- reads, update, delete


@dataclass(frozen=True)
class MemoryFilter:
    """The conditions of a ListMemories filter, checked and converted; all must hold."""

    namespaces: Sequence[str] = ()
    """Exact namespaces."""
    namespaces_under: Sequence[str] = ()
    """Namespaces that match with every path below them."""
    kinds: Sequence[int] = ()
    sessions: Sequence[str] = ()
    """Session ids."""
    metadata: Sequence[tuple[str, str]] = ()
    """(key, value): compared as text, so 5 and "5" both match "5"."""


async def get_memory(
    db: asyncpg.Pool | asyncpg.Connection, tenant: str, memory_id: str
) -> asyncpg.Record | None:
    """The tenant's live memory ``memory_id``, or None."""
    return await db.fetchrow(
        f"SELECT {COLUMNS} FROM memory.memories WHERE tenant = $1 AND id = $2 AND {LIVE}",
        tenant,
        memory_id,
    )


async def list_memories(
    db: asyncpg.Pool | asyncpg.Connection,
    tenant: str,
    conditions: MemoryFilter,
    after: tuple[datetime, str] | None,
    limit: int,
    budget: int,
) -> list[asyncpg.Record]:
    """Up to ``limit`` live memories matching ``conditions``, newest first, after the
    (create_time, id) position ``after`` of the previous page; cut at ``budget`` bytes."""
    where = Where(tenant)
    where.add(LIVE)
    for namespace in conditions.namespaces:
        where.add("namespace = {}", namespace)
    for namespace in conditions.namespaces_under:
        namespace_under(where, namespace)
    for kind in conditions.kinds:
        where.add("kind = {}", kind)
    for session in conditions.sessions:
        where.add("session = {}", session)
    for key, value in conditions.metadata:
        where.add("metadata ->> {} = {}", key, value)
    if after is not None:
        where.add("(create_time, id) < ({}, {})", *after)
    inner = (
        f"SELECT {COLUMNS}, {_ITEM_BYTES} AS {PAGE_ITEM_BYTES} FROM memory.memories"
        f" WHERE {where.sql} ORDER BY create_time DESC, id DESC LIMIT {where.param(limit)}"
    )
    rows: list[asyncpg.Record] = await db.fetch(
        byte_budgeted(inner, order="create_time DESC, id DESC", budget=budget), *where.args
    )
    return rows


async def lock_memory_version(conn: asyncpg.Connection, tenant: str, memory_id: str) -> int | None:
    """Locks the tenant's live memory for an update in the caller's transaction;
    returns its version, or None when there is no such memory."""
    version: int | None = await conn.fetchval(
        f"SELECT version FROM memory.memories WHERE tenant = $1 AND id = $2 AND {LIVE} FOR UPDATE",
        tenant,
        memory_id,
    )
    return version


async def update_memory(
    conn: asyncpg.Connection, tenant: str, memory_id: str, changes: Mapping[str, Any]
) -> asyncpg.Record:
    """Sets ``changes`` (column → value; columns named by the code, never by a client)
    on a memory locked by ``lock_memory_version``, bumping its version."""
    where = Where(tenant)
    where.add(LIVE)
    sets = [f"{column} = {where.param(value)}" for column, value in changes.items()]
    where.add("id = {}", memory_id)
    return await conn.fetchrow(
        f"UPDATE memory.memories SET {', '.join(sets)}, version = version + 1,"
        f" update_time = clock_timestamp() WHERE {where.sql} RETURNING {COLUMNS}",
        *where.args,
    )


async def delete_memory(db: asyncpg.Pool | asyncpg.Connection, tenant: str, memory_id: str) -> bool:
    """Deletes the tenant's live memory; returns whether there was one."""
    deleted = await db.fetchval(
        f"DELETE FROM memory.memories WHERE tenant = $1 AND id = $2 AND {LIVE} RETURNING id",
        tenant,
        memory_id,
    )
    return deleted is not None


async def purge_expired_memories(db: asyncpg.Pool | asyncpg.Connection, *, limit: int) -> int:
    """Deletes up to ``limit`` expired memories of every tenant (reads ignore them
    already; this only reclaims space) in one statement; returns how many were
    deleted. The janitor (``janitor.py``) calls it in batches. The expiry is checked
    again on the row, so a memory whose expiry moved meanwhile stays."""
    return await delete_batch(db, "memory.memories", "expire_time <= now()", limit)
