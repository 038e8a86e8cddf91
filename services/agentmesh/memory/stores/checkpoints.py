"""Storage of LangGraph checkpoints and their pending writes (``memory.checkpoints``,
``memory.checkpoint_writes``). Every function takes the tenant first.

Checkpoints and writes are LangGraph's serialized bytes, stored opaquely; only the
metadata is read, kept as ``jsonb`` so lists can filter on it. Writes have no foreign
key to their checkpoint, on purpose: LangGraph submits a checkpoint and the writes
against it concurrently, so writes may land first and wait under the checkpoint's key.

A session's threads (``<session id>`` and ``<session id>:<suffix>``) are hidden while
the session is deleted and not purged yet (``stores.sessions.thread_session_deleted``):
reads and deletions skip them, and writes to them store nothing. The check rides in the
statement that reads or writes, so it costs no extra round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import asyncpg  # type: ignore[import-untyped]

from agentmesh.core.sql import PAGE_ITEM_BYTES, ROW_OVERHEAD_BYTES, Where, byte_budgeted
from agentmesh.memory.stores.sessions import thread_session_deleted

DELTA_DEPTH_CAP: Final = 100_000
"""Upper bound on the ancestors a retention pass keeps for LangGraph delta channels."""

_CHECKPOINT_COLUMNS: Final = """
    thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint,
    metadata::text AS metadata, create_time
"""
_SELECT_CHECKPOINT: Final = f"SELECT {_CHECKPOINT_COLUMNS} FROM memory.checkpoints"
"""The columns of a checkpoint row as every read returns them (metadata as JSON text)."""
_TUPLE_BYTES: Final = f"""
    octet_length(c.checkpoint) + octet_length(c.metadata::text) + {ROW_OVERHEAD_BYTES}
    + coalesce((SELECT sum(octet_length(w.value) + octet_length(w.channel) + 64)
                FROM memory.checkpoint_writes AS w
                WHERE w.tenant = c.tenant AND w.thread_id = c.thread_id
                  AND w.checkpoint_ns = c.checkpoint_ns
                  AND w.checkpoint_id = c.checkpoint_id), 0)
"""
"""A checkpoint tuple's size estimate in a page: its state, metadata and pending writes."""

# Keeps the newest `keep` checkpoints per (thread, namespace) of the given threads and
# deletes the rest with their writes. A kept checkpoint whose metadata says LangGraph
# delta channels have gone `n` supersteps without a snapshot also keeps its `n + 1`
# nearest ancestors (by parent link): DeltaChannel rebuilds its value by walking the
# parent chain back to a snapshot, so deleting those would silently empty the channel.
#
# Writes whose checkpoint is not stored (put_writes accepts them, see there) go too
# when that checkpoint could not survive this pass if it landed now: `keep` newer
# checkpoints exist in its namespace and no kept checkpoint names it as parent.
# Writes that run ahead of their checkpoint are for the newest one, so they stay.
_PRUNE: Final = f"""
WITH RECURSIVE ranked AS (
    SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, metadata,
           row_number() OVER (
               PARTITION BY thread_id, checkpoint_ns ORDER BY checkpoint_id DESC
           ) AS rank
    FROM memory.checkpoints
    WHERE tenant = $1 AND thread_id = ANY($2::text[])
      AND ($4::text IS NULL OR checkpoint_ns = $4)
      AND NOT {thread_session_deleted("thread_id")}
),
kept (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, budget) AS (
    SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id,
           CASE WHEN jsonb_typeof(metadata -> 'counters_since_delta_snapshot') = 'object'
           THEN 1 + LEAST({DELTA_DEPTH_CAP}, COALESCE((
               SELECT max((counter.value ->> 1)::numeric)
               FROM jsonb_each(metadata -> 'counters_since_delta_snapshot') AS counter
               WHERE jsonb_typeof(counter.value -> 1) = 'number'
           ), 0))::int
           ELSE 0 END
    FROM ranked
    WHERE rank <= $3
  UNION
    SELECT parent.thread_id, parent.checkpoint_ns, parent.checkpoint_id,
           parent.parent_checkpoint_id, kept.budget - 1
    FROM kept
    JOIN memory.checkpoints AS parent
      ON parent.tenant = $1 AND parent.thread_id = kept.thread_id
     AND parent.checkpoint_ns = kept.checkpoint_ns
     AND parent.checkpoint_id = kept.parent_checkpoint_id
    WHERE kept.budget > 0
),
doomed AS (
    DELETE FROM memory.checkpoints AS c
    USING ranked AS r
    WHERE c.tenant = $1 AND c.thread_id = r.thread_id AND c.checkpoint_ns = r.checkpoint_ns
      AND c.checkpoint_id = r.checkpoint_id AND r.rank > $3
      AND NOT EXISTS (
          SELECT 1 FROM kept AS k
          WHERE k.thread_id = c.thread_id AND k.checkpoint_ns = c.checkpoint_ns
            AND k.checkpoint_id = c.checkpoint_id
      )
    RETURNING c.thread_id, c.checkpoint_ns, c.checkpoint_id
),
doomed_writes AS (
    DELETE FROM memory.checkpoint_writes AS w
    USING doomed AS d
    WHERE w.tenant = $1 AND w.thread_id = d.thread_id AND w.checkpoint_ns = d.checkpoint_ns
      AND w.checkpoint_id = d.checkpoint_id
),
orphan_writes AS (
    DELETE FROM memory.checkpoint_writes AS w
    WHERE w.tenant = $1 AND w.thread_id = ANY($2::text[])
      AND ($4::text IS NULL OR w.checkpoint_ns = $4)
      AND NOT EXISTS (
          SELECT 1 FROM ranked AS r
          WHERE r.thread_id = w.thread_id AND r.checkpoint_ns = w.checkpoint_ns
            AND r.checkpoint_id = w.checkpoint_id
      )
      AND EXISTS (
          SELECT 1 FROM ranked AS r
          WHERE r.thread_id = w.thread_id AND r.checkpoint_ns = w.checkpoint_ns
            AND r.rank = $3 AND r.checkpoint_id > w.checkpoint_id
      )
      AND NOT EXISTS (
          SELECT 1 FROM kept AS k
          WHERE k.thread_id = w.thread_id AND k.checkpoint_ns = w.checkpoint_ns
            AND k.parent_checkpoint_id = w.checkpoint_id
      )
)
SELECT count(*) FROM doomed
"""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint to store: LangGraph's serialized state and its metadata."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    parent_checkpoint_id: str
    """Empty for the first checkpoint of a namespace (stored as NULL)."""
    type: str
    """The serializer's tag of ``data``."""
    data: bytes
    metadata_json: str
    """A JSON object, as text (``jsonb``)."""


@dataclass(frozen=True)
class PendingWrite:
    """A write a task made against a checkpoint: LangGraph's serialized value."""

    task_id: str
    idx: int
    """The write's index in its task; negative for special writes (errors, interrupts)."""
    channel: str
    type: str
    value: bytes
    task_path: str


async def put_checkpoint(conn: asyncpg.Connection, tenant: str, checkpoint: Checkpoint) -> bool:
    """Stores a checkpoint, replacing one with the same key (LangGraph may put the same
    checkpoint again: a retried call). False, storing nothing, when the thread belongs
    to a deleted session."""
    stored = await conn.fetchval(
        f"""
        INSERT INTO memory.checkpoints (tenant, thread_id, checkpoint_ns, checkpoint_id,
            parent_checkpoint_id, type, checkpoint, metadata)
        SELECT $1, $2, $3, $4, NULLIF($5, ''), $6, $7, $8::jsonb
        WHERE NOT {thread_session_deleted("$2")}
        ON CONFLICT (tenant, thread_id, checkpoint_ns, checkpoint_id) DO UPDATE
        SET parent_checkpoint_id = EXCLUDED.parent_checkpoint_id,
            type = EXCLUDED.type,
            checkpoint = EXCLUDED.checkpoint,
            metadata = EXCLUDED.metadata
        RETURNING 1
        """,
        tenant,
        checkpoint.thread_id,
        checkpoint.checkpoint_ns,
        checkpoint.checkpoint_id,
        checkpoint.parent_checkpoint_id,
        checkpoint.type,
        checkpoint.data,
        checkpoint.metadata_json,
    )
    return stored is not None


async def put_writes(
    conn: asyncpg.Connection,
    tenant: str,
    thread_id: str,
    checkpoint_ns: str,
    checkpoint_id: str,
    writes: Sequence[PendingWrite],
) -> int | None:
    """Stores writes against a checkpoint, stored or not (yet); returns how many rows
    were written, or None, storing nothing, when the thread belongs to a deleted session.

    ``writes`` must hold one write per (task, idx) (``domain.checkpoints.dedupe_writes``).
    A regular write (idx >= 0) is stored once: a retried task must not replace what the
    first attempt recorded. Special writes (negative idx) are replaced, as in
    LangGraph's own savers.
    """
    result = await conn.fetchrow(
        f"""
        WITH incoming AS (
            SELECT * FROM unnest($5::text[], $6::int[], $7::text[], $8::text[],
                                 $9::bytea[], $10::text[])
                AS w (task_id, idx, channel, type, value, task_path)
        ),
        upserted AS (
            INSERT INTO memory.checkpoint_writes (tenant, thread_id, checkpoint_ns,
                checkpoint_id, task_id, idx, channel, type, value, task_path)
            SELECT $1, $2, $3, $4, task_id, idx, channel, type, value, task_path
            FROM incoming
            WHERE NOT {thread_session_deleted("$2")}
            ON CONFLICT (tenant, thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
            DO UPDATE SET channel = EXCLUDED.channel, type = EXCLUDED.type,
                          value = EXCLUDED.value, task_path = EXCLUDED.task_path
            WHERE EXCLUDED.idx < 0
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM upserted) AS stored,
               {thread_session_deleted("$2")} AS deleted
        """,
        tenant,
        thread_id,
        checkpoint_ns,
        checkpoint_id,
        [w.task_id for w in writes],
        [w.idx for w in writes],
        [w.channel for w in writes],
        [w.type for w in writes],
        [w.value for w in writes],
        [w.task_path for w in writes],
    )
    if result["deleted"]:
        return None
    stored: int = result["stored"]
    return stored


async def get_checkpoint(
    conn: asyncpg.Connection, tenant: str, thread_id: str, checkpoint_ns: str, checkpoint_id: str
) -> asyncpg.Record | None:
    """A checkpoint row, the newest of the namespace when ``checkpoint_id`` is empty;
    None when there is none (or the thread's session is deleted)."""
    where = (
        "WHERE tenant = $1 AND thread_id = $2 AND checkpoint_ns = $3"
        f" AND NOT {thread_session_deleted('$2')}"
    )
    if checkpoint_id:
        return await conn.fetchrow(
            f"{_SELECT_CHECKPOINT} {where} AND checkpoint_id = $4",
            tenant,
            thread_id,
            checkpoint_ns,
            checkpoint_id,
        )
    return await conn.fetchrow(
        f"{_SELECT_CHECKPOINT} {where} ORDER BY checkpoint_id DESC LIMIT 1",
        tenant,
        thread_id,
        checkpoint_ns,
    )


async def list_checkpoints(
    conn: asyncpg.Connection,
    tenant: str,
    *,
    thread_id: str,
    checkpoint_ns: str | None,
    checkpoint_id: str,
    before_checkpoint_id: str,
    metadata_filter: str | None,
    after: tuple[str, str, str] | None,
    limit: int,
    budget: int,
) -> list[asyncpg.Record]:
    """Checkpoint rows, newest first (thread and namespace break ties, so pages never
    overlap), at most ``limit``. Empty strings and None filter nothing; ``checkpoint_ns``
    "" is the root namespace. ``metadata_filter`` is JSON object text the metadata must
    contain; ``after`` the (checkpoint id, thread, namespace) of the row a page follows.
    The page stops at ``budget`` bytes (:func:`agentmesh.core.sql.byte_budgeted`)."""
    where = Where(tenant)
    where.add(f"NOT {thread_session_deleted('thread_id')}")
    if thread_id:
        where.add("thread_id = {}", thread_id)
    if checkpoint_ns is not None:
        where.add("checkpoint_ns = {}", checkpoint_ns)
    if checkpoint_id:
        where.add("checkpoint_id = {}", checkpoint_id)
    if before_checkpoint_id:
        where.add("checkpoint_id < {}", before_checkpoint_id)
    if metadata_filter is not None:
        where.add("metadata @> {}::jsonb", metadata_filter)
    if after is not None:
        where.add("(checkpoint_id, thread_id, checkpoint_ns) < ({}, {}, {})", *after)
    order = "checkpoint_id DESC, thread_id DESC, checkpoint_ns DESC"
    inner = (
        f"SELECT {_CHECKPOINT_COLUMNS}, {_TUPLE_BYTES} AS {PAGE_ITEM_BYTES}"
        f" FROM memory.checkpoints AS c WHERE {where.sql} ORDER BY {order} LIMIT {int(limit)}"
    )
    rows: list[asyncpg.Record] = await conn.fetch(
        byte_budgeted(inner, order=order, budget=budget), *where.args
    )
    return rows


async def pending_writes(
    conn: asyncpg.Connection, tenant: str, checkpoints: Sequence[asyncpg.Record]
) -> list[asyncpg.Record]:
    """The writes of the given checkpoint rows, in one query, in LangGraph's
    ``writes_sort_key`` order (task path, task id, index): the order live execution
    applies them in. Each row names its checkpoint (thread_id, checkpoint_ns,
    checkpoint_id)."""
    if not checkpoints:
        return []
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT w.thread_id, w.checkpoint_ns, w.checkpoint_id, w.task_id, w.idx, w.channel,
               w.type, w.value, w.task_path
        FROM memory.checkpoint_writes AS w
        JOIN unnest($2::text[], $3::text[], $4::text[]) AS k (thread_id, checkpoint_ns, id)
          ON w.thread_id = k.thread_id AND w.checkpoint_ns = k.checkpoint_ns
         AND w.checkpoint_id = k.id
        WHERE w.tenant = $1
        ORDER BY w.task_path, w.task_id, w.idx
        """,
        tenant,
        [row["thread_id"] for row in checkpoints],
        [row["checkpoint_ns"] for row in checkpoints],
        [row["checkpoint_id"] for row in checkpoints],
    )
    return rows


async def prune(
    conn: asyncpg.Connection,
    tenant: str,
    thread_ids: Sequence[str],
    keep_latest: int,
    *,
    checkpoint_ns: str | None = None,
) -> int:
    """Keeps the newest ``keep_latest`` checkpoints per thread and namespace (only
    ``checkpoint_ns`` when given) and their delta-channel ancestors; returns how many
    checkpoints were deleted. Their writes go with them, and so do the writes of
    checkpoints that were never stored and could not be kept if they were (``_PRUNE``)."""
    deleted: int = await conn.fetchval(_PRUNE, tenant, list(thread_ids), keep_latest, checkpoint_ns)
    return deleted


async def delete_thread(db: asyncpg.Pool | asyncpg.Connection, tenant: str, thread_id: str) -> int:
    """Deletes a thread's checkpoints and every write of it, also those of checkpoints
    never stored; returns how many checkpoints went. A thread of a deleted session looks
    empty: nothing is deleted (an undelete gives it back whole, the purge removes it)."""
    hidden = thread_session_deleted("$2")
    deleted: int = await db.fetchval(
        f"""
        WITH doomed AS (
            DELETE FROM memory.checkpoints
            WHERE tenant = $1 AND thread_id = $2 AND NOT {hidden} RETURNING 1
        ),
        doomed_writes AS (
            DELETE FROM memory.checkpoint_writes
            WHERE tenant = $1 AND thread_id = $2 AND NOT {hidden}
        )
        SELECT count(*) FROM doomed
        """,
        tenant,
        thread_id,
    )
    return deleted


async def delete_for_runs(
    db: asyncpg.Pool | asyncpg.Connection, tenant: str, run_ids: Sequence[str]
) -> int:
    """Deletes the checkpoints of the given runs with their writes; returns how many
    checkpoints went. Writes of a checkpoint not stored carry no run id (only checkpoint
    metadata does), so they stay: they join their checkpoint if it lands, and
    delete_thread or a prune removes them if it never does."""
    deleted: int = await db.fetchval(
        f"""
        WITH doomed AS (
            DELETE FROM memory.checkpoints
            WHERE tenant = $1 AND run_id = ANY($2::text[])
              AND NOT {thread_session_deleted("thread_id")}
            RETURNING thread_id, checkpoint_ns, checkpoint_id
        ),
        doomed_writes AS (
            DELETE FROM memory.checkpoint_writes AS w
            USING doomed AS d
            WHERE w.tenant = $1 AND w.thread_id = d.thread_id
              AND w.checkpoint_ns = d.checkpoint_ns AND w.checkpoint_id = d.checkpoint_id
        )
        SELECT count(*) FROM doomed
        """,
        tenant,
        list(run_ids),
    )
    return deleted


@dataclass(frozen=True)
class CopyTargets:
    """What stands in the way of copying a thread onto another."""

    target_taken: bool
    """The target thread has checkpoints already."""
    source_hidden: bool
    """The source thread belongs to a deleted session (it has nothing to copy)."""
    target_hidden: bool
    """The target thread belongs to a deleted session (it takes no writes)."""


async def copy_targets(
    conn: asyncpg.Connection, tenant: str, source: str, target: str
) -> CopyTargets:
    """Whether ``source`` can be copied onto ``target`` (see :class:`CopyTargets`)."""
    found = await conn.fetchrow(
        f"""
        SELECT EXISTS (SELECT 1 FROM memory.checkpoints WHERE tenant = $1 AND thread_id = $3)
                   AS target_taken,
               {thread_session_deleted("$2")} AS source_hidden,
               {thread_session_deleted("$3")} AS target_hidden
        """,
        tenant,
        source,
        target,
    )
    return CopyTargets(
        target_taken=found["target_taken"],
        source_hidden=found["source_hidden"],
        target_hidden=found["target_hidden"],
    )


async def copy_thread(conn: asyncpg.Connection, tenant: str, source: str, target: str) -> int:
    """Copies every checkpoint of ``source`` and their writes to ``target`` (same ids, so
    the copy lists in the same order); returns how many checkpoints were copied. Run it
    in a transaction, after :func:`copy_targets`, so the copy is all-or-nothing.

    Only the writes of the checkpoints copied go along: a write whose checkpoint the
    source does not hold (yet) belongs to a checkpoint that can only ever land on the
    source, so on the target it would wait forever. Writes that reached the target
    ahead of their checkpoint stay as they are.
    """
    copied: int = await conn.fetchval(
        """
        WITH copied AS (
            INSERT INTO memory.checkpoints (tenant, thread_id, checkpoint_ns, checkpoint_id,
                parent_checkpoint_id, type, checkpoint, metadata, create_time)
            SELECT tenant, $3, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type,
                   checkpoint, metadata, create_time
            FROM memory.checkpoints WHERE tenant = $1 AND thread_id = $2
            RETURNING 1
        )
        SELECT count(*) FROM copied
        """,
        tenant,
        source,
        target,
    )
    if copied == 0:
        return 0
    await conn.execute(
        """
        INSERT INTO memory.checkpoint_writes (tenant, thread_id, checkpoint_ns, checkpoint_id,
            task_id, idx, channel, type, value, task_path)
        SELECT w.tenant, $3, w.checkpoint_ns, w.checkpoint_id, w.task_id, w.idx, w.channel,
               w.type, w.value, w.task_path
        FROM memory.checkpoint_writes AS w
        WHERE w.tenant = $1 AND w.thread_id = $2
          AND EXISTS (
              SELECT 1 FROM memory.checkpoints AS c
              WHERE c.tenant = $1 AND c.thread_id = $3 AND c.checkpoint_ns = w.checkpoint_ns
                AND c.checkpoint_id = w.checkpoint_id
          )
        ON CONFLICT DO NOTHING
        """,
        tenant,
        source,
        target,
    )
    return copied
