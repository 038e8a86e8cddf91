"""MemoryService RPCs: LangGraph checkpoints (put, get, list, delete, copy, prune).

The agent runtime's saver (``agentmesh.langgraph.saver``) serializes checkpoints and
writes with LangGraph's own serializer; this service stores those bytes opaquely and
reads only the metadata, which arrives as JSON text and is kept as ``jsonb`` so list
filters can match on it. Every statement is scoped by the caller's tenant.

A session's threads (``<session id>`` and ``<session id>:<suffix>``) are hidden while
the session is deleted and not purged yet (``stores.sessions.thread_session_deleted``): reads
and deletions skip them, so an undelete finds them as they were, and writes to them
are NOT_FOUND naming the session, as appending to its messages is. The check rides in
the statement that reads or writes, so it costs no extra round trip.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]

from agentmesh.core.contract import ServicerContext
from agentmesh.core.errors import AlreadyExists, InvalidArgument, NotFound
from agentmesh.core.names import SESSIONS
from agentmesh.core.paging import decode_page_token, encode_page_token, page_size
from agentmesh.memory.convert import timestamp
from agentmesh.memory.rpc import RpcGroup
from agentmesh.memory.stores.sessions import thread_session_deleted, thread_session_id
from agentmesh.v1 import memory_pb2

MAX_ID_CHARS: Final = 512
"""Thread, checkpoint, task and run ids: LangGraph uses UUIDs, agentmesh session names."""
MAX_NS_CHARS: Final = 4096
"""Checkpoint namespaces grow with subgraph nesting (``outer:<id>|inner:<id>``)."""
MAX_TYPE_CHARS: Final = 64
"""Serializer tags (``msgpack``, ``json``, ``bytes``, ``empty``...)."""
MAX_METADATA_BYTES: Final = 256 * 1024
MAX_WRITES: Final = 10_000
"""Writes per call; a task's fan-out (``Send``) can be wide, the message limit binds first."""
MAX_BATCH: Final = 1000
"""Run ids per DeleteCheckpointsForRuns, thread ids per PruneCheckpoints."""
DEFAULT_PAGE_SIZE: Final = 100
DELTA_DEPTH_CAP: Final = 100_000
"""Upper bound on the ancestors a retention pass keeps for LangGraph delta channels."""

_SELECT_CHECKPOINT: Final = """
    SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint,
           metadata::text AS metadata, create_time
    FROM memory.checkpoints
"""

# Keeps the newest `keep` checkpoints per (thread, namespace) of the given threads and
# deletes the rest with their writes. A kept checkpoint whose metadata says LangGraph
# delta channels have gone `n` supersteps without a snapshot also keeps its `n + 1`
# nearest ancestors (by parent link): DeltaChannel rebuilds its value by walking the
# parent chain back to a snapshot, so deleting those would silently empty the channel.
#
# Writes whose checkpoint is not stored (PutCheckpointWrites accepts them, see there)
# go too when that checkpoint could not survive this pass if it landed now: `keep`
# newer checkpoints exist in its namespace and no kept checkpoint names it as parent.
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


def _deleted_session(thread_id: str) -> NotFound:
    """The error of a write to a thread of a deleted session."""
    return NotFound(SESSIONS.resource_type, SESSIONS.format(thread_session_id(thread_id)))


class _Violations:
    """Collects every field violation of a request, so one error names them all."""

    def __init__(self) -> None:
        self.found: list[tuple[str, str]] = []

    def add(self, field: str, why: str) -> None:
        self.found.append((field, why))

    def text(self, value: str, field: str, *, required: bool, max_chars: int) -> str:
        """Checks a text field PostgreSQL will store: present if required, bounded, no NUL."""
        if required and not value:
            self.add(field, "required")
        elif len(value) > max_chars:
            self.add(field, f"at most {max_chars} characters")
        elif "\x00" in value:
            self.add(field, "must not contain NUL characters")
        return value

    def raise_if_any(self) -> None:
        if self.found:
            raise InvalidArgument(self.found)


def _json_object(text: str, field: str, violations: _Violations, *, max_bytes: int) -> str:
    """Validates JSON object text for a ``jsonb`` column; empty text is ``{}``."""
    if not text:
        return "{}"
    if len(text.encode()) > max_bytes:
        violations.add(field, f"larger than {max_bytes} bytes")
        return "{}"

    def reject_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(text, parse_constant=reject_constant)
    except ValueError as exc:
        violations.add(field, f"not valid JSON: {exc}")
        return "{}"
    if not isinstance(value, dict):
        violations.add(field, "must be a JSON object")
    elif "\\u0000" in text:  # jsonb cannot store NUL in strings
        violations.add(field, "must not contain NUL characters (\\u0000)")
    return text


def _typed_value(
    value: memory_pb2.TypedValue, present: bool, field: str, violations: _Violations
) -> None:
    if not present:
        violations.add(field, "required")
        return
    violations.text(value.type, f"{field}.type", required=True, max_chars=MAX_TYPE_CHARS)


def _checked_metadata(checkpoint: memory_pb2.Checkpoint) -> str:
    """Validates a checkpoint to store; returns its metadata as ``jsonb`` text."""
    check = _Violations()
    field = "checkpoint."
    check.text(checkpoint.thread_id, f"{field}thread_id", required=True, max_chars=MAX_ID_CHARS)
    check.text(
        checkpoint.checkpoint_ns, f"{field}checkpoint_ns", required=False, max_chars=MAX_NS_CHARS
    )
    for name, required in (("checkpoint_id", True), ("parent_checkpoint_id", False)):
        value = getattr(checkpoint, name)
        check.text(value, f"{field}{name}", required=required, max_chars=MAX_ID_CHARS)
    present = checkpoint.HasField("checkpoint")
    _typed_value(checkpoint.checkpoint, present, f"{field}checkpoint", check)
    metadata = _json_object(
        checkpoint.metadata_json, f"{field}metadata_json", check, max_bytes=MAX_METADATA_BYTES
    )
    check.raise_if_any()
    return metadata


def _checkpoint(row: asyncpg.Record) -> memory_pb2.Checkpoint:
    return memory_pb2.Checkpoint(
        thread_id=row["thread_id"],
        checkpoint_ns=row["checkpoint_ns"],
        checkpoint_id=row["checkpoint_id"],
        parent_checkpoint_id=row["parent_checkpoint_id"] or "",
        checkpoint=memory_pb2.TypedValue(type=row["type"], data=row["checkpoint"]),
        metadata_json=row["metadata"],
        create_time=timestamp(row["create_time"]),
    )


def _pending_write(row: asyncpg.Record) -> memory_pb2.PendingWrite:
    return memory_pb2.PendingWrite(
        task_id=row["task_id"],
        channel=row["channel"],
        value=memory_pb2.TypedValue(type=row["type"], data=row["value"]),
        idx=row["idx"],
        task_path=row["task_path"],
    )


async def _tuples(
    conn: asyncpg.Connection, tenant: str, rows: Sequence[asyncpg.Record]
) -> list[memory_pb2.CheckpointTuple]:
    """Checkpoint rows with their pending writes, fetched in one query.

    Writes come in LangGraph's ``writes_sort_key`` order (task path, task id, index),
    the order live execution applies them in.
    """
    if not rows:
        return []
    writes = await conn.fetch(
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
        [row["thread_id"] for row in rows],
        [row["checkpoint_ns"] for row in rows],
        [row["checkpoint_id"] for row in rows],
    )
    by_checkpoint: dict[tuple[str, str, str], list[memory_pb2.PendingWrite]] = {}
    for write in writes:
        key = (write["thread_id"], write["checkpoint_ns"], write["checkpoint_id"])
        by_checkpoint.setdefault(key, []).append(_pending_write(write))
    return [
        memory_pb2.CheckpointTuple(
            checkpoint=_checkpoint(row),
            pending_writes=by_checkpoint.get(
                (row["thread_id"], row["checkpoint_ns"], row["checkpoint_id"]), []
            ),
        )
        for row in rows
    ]


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


class CheckpointRpcs(RpcGroup):
    """LangGraph checkpoints: put, put writes, get, list, delete or copy threads, prune.

    RPCs not defined here answer UNIMPLEMENTED (see servicer.py).
    """

    async def PutCheckpoint(
        self, request: memory_pb2.PutCheckpointRequest, context: ServicerContext
    ) -> memory_pb2.PutCheckpointResponse:
        if not request.HasField("checkpoint"):
            raise InvalidArgument("checkpoint", "required")
        checkpoint = request.checkpoint
        metadata = _checked_metadata(checkpoint)
        thread_id, namespace = checkpoint.thread_id, checkpoint.checkpoint_ns

        tenant = self.tenant()
        keep_latest = self.deps.settings.checkpoint_keep_latest
        async with self.deps.pool.acquire() as conn, conn.transaction():
            # Idempotent: LangGraph may put the same checkpoint again (a retried call).
            # No row comes back only when the thread's session is deleted.
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
                thread_id,
                namespace,
                checkpoint.checkpoint_id,
                checkpoint.parent_checkpoint_id,
                checkpoint.checkpoint.type,
                checkpoint.checkpoint.data,
                metadata,
            )
            if stored is None:
                raise _deleted_session(thread_id)
            # Retention rides on the write that grows the thread, in its transaction,
            # so a thread never holds more than the setting allows (plus the ancestors
            # its delta channels still need, see _PRUNE).
            if keep_latest > 0:
                await prune(conn, tenant, [thread_id], keep_latest, checkpoint_ns=namespace)
        return memory_pb2.PutCheckpointResponse(
            thread_id=thread_id, checkpoint_ns=namespace, checkpoint_id=checkpoint.checkpoint_id
        )

    async def PutCheckpointWrites(
        self, request: memory_pb2.PutCheckpointWritesRequest, context: ServicerContext
    ) -> memory_pb2.PutCheckpointWritesResponse:
        check = _Violations()
        check.text(request.thread_id, "thread_id", required=True, max_chars=MAX_ID_CHARS)
        check.text(request.checkpoint_ns, "checkpoint_ns", required=False, max_chars=MAX_NS_CHARS)
        check.text(request.checkpoint_id, "checkpoint_id", required=True, max_chars=MAX_ID_CHARS)
        if not request.writes:
            check.add("writes", "at least one write is required")
        elif len(request.writes) > MAX_WRITES:
            check.add("writes", f"at most {MAX_WRITES} writes per call")
        for i, write in enumerate(request.writes):
            field = f"writes[{i}]"
            check.text(write.task_id, f"{field}.task_id", required=True, max_chars=MAX_ID_CHARS)
            check.text(write.channel, f"{field}.channel", required=True, max_chars=MAX_ID_CHARS)
            check.text(
                write.task_path, f"{field}.task_path", required=False, max_chars=MAX_NS_CHARS
            )
            _typed_value(write.value, write.HasField("value"), f"{field}.value", check)
            if check.found:
                break  # one bad write is enough to report; the rest are likely alike
        check.raise_if_any()

        writes = _dedupe_writes(request.writes)
        tenant = self.tenant()
        # The checkpoint need not exist: LangGraph submits a checkpoint and the writes
        # against it concurrently (durability "async"/"exit"), and its own savers accept
        # writes for a checkpoint they do not hold. The writes wait under the
        # checkpoint's key (the table has no foreign key, on purpose) and come back with
        # it once it lands; DeleteThread and PruneCheckpoints clear those whose
        # checkpoint never comes.
        # A regular write (idx >= 0) is stored once: a retried task must not replace
        # what the first attempt recorded. Special writes (errors, interrupts, negative
        # idx) are replaced, as in LangGraph's own savers.
        async with self.deps.pool.acquire() as conn, conn.transaction():
            # Nothing is stored for a thread of a deleted session; `deleted` says so.
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
                request.thread_id,
                request.checkpoint_ns,
                request.checkpoint_id,
                [w.task_id for w in writes],
                [w.idx for w in writes],
                [w.channel for w in writes],
                [w.value.type for w in writes],
                [w.value.data for w in writes],
                [w.task_path for w in writes],
            )
        if result["deleted"]:
            raise _deleted_session(request.thread_id)
        return memory_pb2.PutCheckpointWritesResponse(stored_count=result["stored"])

    async def GetCheckpoint(
        self, request: memory_pb2.GetCheckpointRequest, context: ServicerContext
    ) -> memory_pb2.CheckpointTuple:
        check = _Violations()
        check.text(request.thread_id, "thread_id", required=True, max_chars=MAX_ID_CHARS)
        check.text(request.checkpoint_ns, "checkpoint_ns", required=False, max_chars=MAX_NS_CHARS)
        check.text(request.checkpoint_id, "checkpoint_id", required=False, max_chars=MAX_ID_CHARS)
        check.raise_if_any()

        tenant = self.tenant()
        where = (
            "WHERE tenant = $1 AND thread_id = $2 AND checkpoint_ns = $3"
            f" AND NOT {thread_session_deleted('$2')}"
        )
        async with self.deps.pool.acquire() as conn:
            if request.checkpoint_id:
                row = await conn.fetchrow(
                    f"{_SELECT_CHECKPOINT} {where} AND checkpoint_id = $4",
                    tenant,
                    request.thread_id,
                    request.checkpoint_ns,
                    request.checkpoint_id,
                )
            else:
                row = await conn.fetchrow(
                    f"{_SELECT_CHECKPOINT} {where} ORDER BY checkpoint_id DESC LIMIT 1",
                    tenant,
                    request.thread_id,
                    request.checkpoint_ns,
                )
            if row is None:
                raise NotFound(
                    "checkpoint",
                    f"threads/{request.thread_id}/namespaces/{request.checkpoint_ns}"
                    f"/checkpoints/{request.checkpoint_id or 'latest'}",
                )
            (found,) = await _tuples(conn, tenant, [row])
        return found

    async def ListCheckpoints(
        self, request: memory_pb2.ListCheckpointsRequest, context: ServicerContext
    ) -> memory_pb2.ListCheckpointsResponse:
        check = _Violations()
        check.text(request.thread_id, "thread_id", required=False, max_chars=MAX_ID_CHARS)
        check.text(request.checkpoint_ns, "checkpoint_ns", required=False, max_chars=MAX_NS_CHARS)
        check.text(request.checkpoint_id, "checkpoint_id", required=False, max_chars=MAX_ID_CHARS)
        check.text(
            request.before_checkpoint_id,
            "before_checkpoint_id",
            required=False,
            max_chars=MAX_ID_CHARS,
        )
        metadata_filter = _json_object(
            request.metadata_filter_json,
            "metadata_filter_json",
            check,
            max_bytes=MAX_METADATA_BYTES,
        )
        check.raise_if_any()
        size = page_size(request.page_size, default=DEFAULT_PAGE_SIZE)

        tenant = self.tenant()
        query = {
            "thread_id": request.thread_id,
            "checkpoint_ns": request.checkpoint_ns if request.HasField("checkpoint_ns") else "\0",
            "checkpoint_id": request.checkpoint_id,
            "before": request.before_checkpoint_id,
            "filter": metadata_filter,
        }
        position = decode_page_token(request.page_token, query)
        where, args = _list_conditions(tenant, request, metadata_filter, position)
        # Newest first; thread and namespace break ties so pages never overlap.
        sql = (
            f"{_SELECT_CHECKPOINT} WHERE {where}"
            " ORDER BY checkpoint_id DESC, thread_id DESC, checkpoint_ns DESC"
            f" LIMIT {size + 1}"
        )
        async with self.deps.pool.acquire() as conn:
            rows = await conn.fetch(sql, *args)
            tuples = await _tuples(conn, tenant, rows[:size])
        # Each tuple carries a whole serialized state, so a page is also cut by size:
        # a response must fit the gRPC message limit however large the states are.
        page = _fit(tuples, self.deps.process.max_message_bytes // 2)
        next_token = ""
        if len(page) < len(rows):
            last = page[-1].checkpoint
            next_token = encode_page_token(
                {"id": last.checkpoint_id, "t": last.thread_id, "ns": last.checkpoint_ns}, query
            )
        return memory_pb2.ListCheckpointsResponse(checkpoints=page, next_page_token=next_token)

    async def DeleteThread(
        self, request: memory_pb2.DeleteThreadRequest, context: ServicerContext
    ) -> memory_pb2.DeleteThreadResponse:
        check = _Violations()
        check.text(request.thread_id, "thread_id", required=True, max_chars=MAX_ID_CHARS)
        check.raise_if_any()
        # Every write of the thread goes, also those of checkpoints never stored.
        # A thread of a deleted session looks empty: nothing to delete (an undelete
        # gives it back whole, the purge removes it).
        hidden = thread_session_deleted("$2")
        deleted: int = await self.deps.pool.fetchval(
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
            self.tenant(),
            request.thread_id,
        )
        return memory_pb2.DeleteThreadResponse(deleted_checkpoints=deleted)

    async def CopyThread(
        self, request: memory_pb2.CopyThreadRequest, context: ServicerContext
    ) -> memory_pb2.CopyThreadResponse:
        check = _Violations()
        source = check.text(
            request.source_thread_id, "source_thread_id", required=True, max_chars=MAX_ID_CHARS
        )
        target = check.text(
            request.target_thread_id, "target_thread_id", required=True, max_chars=MAX_ID_CHARS
        )
        if source and source == target:
            check.add("target_thread_id", "must differ from source_thread_id")
        check.raise_if_any()

        tenant = self.tenant()
        try:
            async with self.deps.pool.acquire() as conn, conn.transaction():
                copied = await _copy_thread(conn, tenant, source, target)
        except asyncpg.UniqueViolationError:
            # A concurrent copy onto the same target won the race.
            raise AlreadyExists("thread", target) from None
        return memory_pb2.CopyThreadResponse(copied_checkpoints=copied)

    async def DeleteCheckpointsForRuns(
        self, request: memory_pb2.DeleteCheckpointsForRunsRequest, context: ServicerContext
    ) -> memory_pb2.DeleteCheckpointsForRunsResponse:
        check = _Violations()
        _id_list(request.run_ids, "run_ids", check)
        check.raise_if_any()
        # Writes go with their checkpoints. Writes of a checkpoint not stored carry no
        # run id (only checkpoint metadata does), so they stay: they join their checkpoint
        # if it lands, and DeleteThread or a prune removes them if it never does.
        deleted: int = await self.deps.pool.fetchval(
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
            self.tenant(),
            list(dict.fromkeys(request.run_ids)),
        )
        return memory_pb2.DeleteCheckpointsForRunsResponse(deleted_checkpoints=deleted)

    async def PruneCheckpoints(
        self, request: memory_pb2.PruneCheckpointsRequest, context: ServicerContext
    ) -> memory_pb2.PruneCheckpointsResponse:
        check = _Violations()
        _id_list(request.thread_ids, "thread_ids", check)
        if request.keep_latest < 1:
            check.add("keep_latest", "must be at least 1 (DeleteThread removes everything)")
        check.raise_if_any()
        async with self.deps.pool.acquire() as conn, conn.transaction():
            deleted = await prune(
                conn, self.tenant(), list(dict.fromkeys(request.thread_ids)), request.keep_latest
            )
        return memory_pb2.PruneCheckpointsResponse(deleted_checkpoints=deleted)


def _fit(
    tuples: list[memory_pb2.CheckpointTuple], max_bytes: int
) -> list[memory_pb2.CheckpointTuple]:
    """The leading tuples that fit in ``max_bytes`` (always at least one)."""
    total = 0
    for count, found in enumerate(tuples):
        total += found.ByteSize()
        if count and total > max_bytes:
            return tuples[:count]
    return tuples


def _dedupe_writes(
    writes: Sequence[memory_pb2.PendingWrite],
) -> list[memory_pb2.PendingWrite]:
    """One write per (task, idx), as the table holds: the first of a regular write, the
    last of a special one, matching how the upsert treats writes from separate calls."""
    chosen: dict[tuple[str, int], memory_pb2.PendingWrite] = {}
    for write in writes:
        key = (write.task_id, write.idx)
        if write.idx < 0 or key not in chosen:
            chosen[key] = write
    return list(chosen.values())


def _id_list(values: Sequence[str], field: str, check: _Violations) -> None:
    if not values:
        check.add(field, "at least one id is required")
    elif len(values) > MAX_BATCH:
        check.add(field, f"at most {MAX_BATCH} ids per call")
    for i, value in enumerate(values):
        check.text(value, f"{field}[{i}]", required=True, max_chars=MAX_ID_CHARS)


def _list_conditions(
    tenant: str,
    request: memory_pb2.ListCheckpointsRequest,
    metadata_filter: str,
    position: dict[str, Any] | None,
) -> tuple[str, list[Any]]:
    """The WHERE clause of a ListCheckpoints page and its arguments."""
    conditions = ["tenant = $1", f"NOT {thread_session_deleted('thread_id')}"]
    args: list[Any] = [tenant]

    def where(condition: str, *values: Any) -> None:
        # `{}` placeholders become $n in argument order.
        numbers = [f"${len(args) + i + 1}" for i in range(len(values))]
        conditions.append(condition.format(*numbers))
        args.extend(values)

    if request.thread_id:
        where("thread_id = {}", request.thread_id)
    if request.HasField("checkpoint_ns"):
        where("checkpoint_ns = {}", request.checkpoint_ns)
    if request.checkpoint_id:
        where("checkpoint_id = {}", request.checkpoint_id)
    if request.before_checkpoint_id:
        where("checkpoint_id < {}", request.before_checkpoint_id)
    if metadata_filter != "{}":
        where("metadata @> {}::jsonb", metadata_filter)
    if position is not None:
        where("(checkpoint_id, thread_id, checkpoint_ns) < ({}, {}, {})", *_position(position))
    return " AND ".join(conditions), args


def _position(position: dict[str, Any]) -> tuple[str, str, str]:
    """The (checkpoint id, thread, namespace) a ListCheckpoints page token resumes after."""
    values = (position.get("id"), position.get("t"), position.get("ns"))
    if not all(isinstance(value, str) for value in values):
        raise InvalidArgument("page_token", "not a page token issued by this method")
    return values  # type: ignore[return-value]  # all three checked to be str


async def _copy_thread(conn: asyncpg.Connection, tenant: str, source: str, target: str) -> int:
    """Copies every checkpoint and write of ``source`` to ``target`` (same ids, so the
    copy lists in the same order); the caller's transaction makes it all-or-nothing."""
    # A deleted session's thread: as a source it has no checkpoints to copy; as a
    # target it takes no writes.
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
    if found["target_hidden"]:
        raise _deleted_session(target)
    if found["source_hidden"]:
        raise NotFound("thread", source)
    if found["target_taken"]:
        raise AlreadyExists("thread", target)
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
        raise NotFound("thread", source)
    # Only the writes of the checkpoints just copied: a write whose checkpoint the source
    # does not hold (yet) belongs to a checkpoint that can only ever land on the source,
    # so on the target it would wait forever.
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
        -- Writes that reached the target ahead of their checkpoint stay as they are.
        ON CONFLICT DO NOTHING
        """,
        tenant,
        source,
        target,
    )
    return copied
