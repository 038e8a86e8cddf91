"""MemoryService RPCs: LangGraph checkpoints (put, get, list, delete, copy, prune).

The agent runtime's saver (``agentmesh.langgraph.saver``) serializes checkpoints and
writes with LangGraph's own serializer; this service stores those bytes opaquely and
reads only the metadata (``stores.checkpoints``). Writes to a thread of a deleted
session are NOT_FOUND naming the session, as appending to its messages is; reads and
deletions find such a thread empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import asyncpg  # type: ignore[import-untyped]

from agentmesh.core.contract import ServicerContext
from agentmesh.core.errors import AlreadyExists, InvalidArgument, NotFound
from agentmesh.core.names import SESSIONS
from agentmesh.core.paging import Keyset, fit_page, page_size
from agentmesh.core.sql import item_bytes
from agentmesh.core.validation import Violations
from agentmesh.memory.convert import json_object, timestamp
from agentmesh.memory.domain.checkpoints import VALUE_TYPES, dedupe_writes
from agentmesh.memory.rpc import RpcGroup, listing
from agentmesh.memory.stores import checkpoints as db
from agentmesh.memory.stores.sessions import thread_session_id
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

PAGE: Final = Keyset(str, str, str)
"""ListCheckpoints pages: after (checkpoint id, thread id, namespace) of the last tuple."""


def _deleted_session(thread_id: str) -> NotFound:
    """The error of a write to a thread of a deleted session."""
    return NotFound(SESSIONS.resource_type, SESSIONS.format(thread_session_id(thread_id)))


# -- validation --------------------------------------------------------------------------


def _json_object(text: str, field: str, violations: Violations) -> str:
    """JSON object text for a ``jsonb`` column, checked; empty text is ``{}``."""
    if not text:
        return "{}"
    violations.check(lambda: json_object(text, field=field, max_bytes=MAX_METADATA_BYTES))
    return text


def _typed_value(
    value: memory_pb2.TypedValue,
    present: bool,
    field: str,
    violations: Violations,
    *,
    max_bytes: int,
) -> None:
    if not present:
        violations.add(field, "required")
        return
    if len(value.data) > max_bytes:
        violations.add(f"{field}.data", f"{len(value.data)} bytes; at most {max_bytes}")
    violations.text(value.type, f"{field}.type", required=True, max_chars=MAX_TYPE_CHARS)
    well_formed = value.type and len(value.type) <= MAX_TYPE_CHARS and "\x00" not in value.type
    if well_formed and value.type not in VALUE_TYPES:
        violations.add(
            f"{field}.type",
            f"{value.type!r} is not stored: one of {', '.join(sorted(VALUE_TYPES))}"
            " (a pickle could make its reader run code)",
        )


def _id_list(values: Sequence[str], field: str, violations: Violations) -> None:
    if not values:
        violations.add(field, "at least one id is required")
    elif len(values) > MAX_BATCH:
        violations.add(field, f"at most {MAX_BATCH} ids per call")
    for i, value in enumerate(values):
        violations.text(value, f"{field}[{i}]", required=True, max_chars=MAX_ID_CHARS)


def _checked_checkpoint(checkpoint: memory_pb2.Checkpoint, *, max_bytes: int) -> db.Checkpoint:
    """Validates a checkpoint to store (every bad field at once)."""
    check = Violations()
    field = "checkpoint."
    check.text(checkpoint.thread_id, f"{field}thread_id", required=True, max_chars=MAX_ID_CHARS)
    check.text(
        checkpoint.checkpoint_ns, f"{field}checkpoint_ns", required=False, max_chars=MAX_NS_CHARS
    )
    for name, required in (("checkpoint_id", True), ("parent_checkpoint_id", False)):
        value = getattr(checkpoint, name)
        check.text(value, f"{field}{name}", required=required, max_chars=MAX_ID_CHARS)
    present = checkpoint.HasField("checkpoint")
    _typed_value(checkpoint.checkpoint, present, f"{field}checkpoint", check, max_bytes=max_bytes)
    metadata = _json_object(checkpoint.metadata_json, f"{field}metadata_json", check)
    check.raise_if_any()
    return db.Checkpoint(
        thread_id=checkpoint.thread_id,
        checkpoint_ns=checkpoint.checkpoint_ns,
        checkpoint_id=checkpoint.checkpoint_id,
        parent_checkpoint_id=checkpoint.parent_checkpoint_id,
        type=checkpoint.checkpoint.type,
        data=checkpoint.checkpoint.data,
        metadata_json=metadata,
    )


def _check_writes(request: memory_pb2.PutCheckpointWritesRequest, *, max_bytes: int) -> None:
    check = Violations()
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
        check.text(write.task_path, f"{field}.task_path", required=False, max_chars=MAX_NS_CHARS)
        _typed_value(
            write.value, write.HasField("value"), f"{field}.value", check, max_bytes=max_bytes
        )
        if check:
            break  # one bad write is enough to report; the rest are likely alike
    check.raise_if_any()


# -- rows to protos ----------------------------------------------------------------------


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


def _key(row: asyncpg.Record) -> tuple[str, str, str]:
    return row["thread_id"], row["checkpoint_ns"], row["checkpoint_id"]


async def _tuples(
    conn: asyncpg.Connection, tenant: str, rows: Sequence[asyncpg.Record]
) -> list[memory_pb2.CheckpointTuple]:
    """Checkpoint rows with their pending writes (fetched in one query, in the order
    live execution applies them)."""
    by_checkpoint: dict[tuple[str, str, str], list[memory_pb2.PendingWrite]] = {}
    for write in await db.pending_writes(conn, tenant, rows):
        by_checkpoint.setdefault(_key(write), []).append(_pending_write(write))
    return [
        memory_pb2.CheckpointTuple(
            checkpoint=_checkpoint(row), pending_writes=by_checkpoint.get(_key(row), [])
        )
        for row in rows
    ]


class CheckpointRpcs(RpcGroup):
    """LangGraph checkpoints: put, put writes, get, list, delete or copy threads, prune."""

    async def PutCheckpoint(
        self, request: memory_pb2.PutCheckpointRequest, context: ServicerContext
    ) -> memory_pb2.PutCheckpointResponse:
        if not request.HasField("checkpoint"):
            raise InvalidArgument("checkpoint", "required")
        checkpoint = _checked_checkpoint(
            request.checkpoint, max_bytes=self.deps.settings.checkpoint_max_bytes
        )

        tenant = self.tenant()
        await self.deps.quotas.admit(
            tenant, "checkpoints", rows=1, size=len(checkpoint.data) + len(checkpoint.metadata_json)
        )
        keep_latest = self.deps.settings.checkpoint_keep_latest
        async with self.deps.pool.acquire() as conn, conn.transaction():
            if not await db.put_checkpoint(conn, tenant, checkpoint):
                raise _deleted_session(checkpoint.thread_id)
            # Retention rides on the write that grows the thread, in its transaction,
            # so a thread never holds more than the setting allows (plus the ancestors
            # its delta channels still need, see stores.checkpoints.prune).
            if keep_latest > 0:
                await db.prune(
                    conn,
                    tenant,
                    [checkpoint.thread_id],
                    keep_latest,
                    checkpoint_ns=checkpoint.checkpoint_ns,
                )
        return memory_pb2.PutCheckpointResponse(
            thread_id=checkpoint.thread_id,
            checkpoint_ns=checkpoint.checkpoint_ns,
            checkpoint_id=checkpoint.checkpoint_id,
        )

    async def PutCheckpointWrites(
        self, request: memory_pb2.PutCheckpointWritesRequest, context: ServicerContext
    ) -> memory_pb2.PutCheckpointWritesResponse:
        _check_writes(request, max_bytes=self.deps.settings.checkpoint_write_max_bytes)
        writes = [
            db.PendingWrite(
                task_id=w.task_id,
                idx=w.idx,
                channel=w.channel,
                type=w.value.type,
                value=w.value.data,
                task_path=w.task_path,
            )
            for w in dedupe_writes(request.writes)
        ]
        await self.deps.quotas.admit(
            self.tenant(), "checkpoints", rows=0, size=sum(len(w.value) for w in writes)
        )
        # The checkpoint need not exist: LangGraph submits a checkpoint and the writes
        # against it concurrently (durability "async"/"exit"), and its own savers accept
        # writes for a checkpoint they do not hold. The writes wait under the
        # checkpoint's key and come back with it once it lands; DeleteThread and
        # PruneCheckpoints clear those whose checkpoint never comes.
        async with self.deps.pool.acquire() as conn, conn.transaction():
            stored = await db.put_writes(
                conn,
                self.tenant(),
                request.thread_id,
                request.checkpoint_ns,
                request.checkpoint_id,
                writes,
            )
        if stored is None:
            raise _deleted_session(request.thread_id)
        return memory_pb2.PutCheckpointWritesResponse(stored_count=stored)

    async def GetCheckpoint(
        self, request: memory_pb2.GetCheckpointRequest, context: ServicerContext
    ) -> memory_pb2.CheckpointTuple:
        check = Violations()
        check.text(request.thread_id, "thread_id", required=True, max_chars=MAX_ID_CHARS)
        check.text(request.checkpoint_ns, "checkpoint_ns", required=False, max_chars=MAX_NS_CHARS)
        check.text(request.checkpoint_id, "checkpoint_id", required=False, max_chars=MAX_ID_CHARS)
        check.raise_if_any()

        tenant = self.tenant()
        async with self.deps.pool.acquire() as conn:
            row = await db.get_checkpoint(
                conn, tenant, request.thread_id, request.checkpoint_ns, request.checkpoint_id
            )
            if row is None:
                raise NotFound(
                    "checkpoint",
                    f"threads/{request.thread_id}/namespaces/{request.checkpoint_ns}"
                    f"/checkpoints/{request.checkpoint_id or 'latest'}",
                )
            (found,) = await _tuples(conn, tenant, [row])
        return found

    @listing
    async def ListCheckpoints(
        self, request: memory_pb2.ListCheckpointsRequest, context: ServicerContext
    ) -> memory_pb2.ListCheckpointsResponse:
        check = Violations()
        check.text(request.thread_id, "thread_id", required=False, max_chars=MAX_ID_CHARS)
        check.text(request.checkpoint_ns, "checkpoint_ns", required=False, max_chars=MAX_NS_CHARS)
        check.text(request.checkpoint_id, "checkpoint_id", required=False, max_chars=MAX_ID_CHARS)
        check.text(
            request.before_checkpoint_id,
            "before_checkpoint_id",
            required=False,
            max_chars=MAX_ID_CHARS,
        )
        metadata_filter = _json_object(request.metadata_filter_json, "metadata_filter_json", check)
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
        after = PAGE.decode(request.page_token, query)
        async with self.deps.pool.acquire() as conn:
            rows = await db.list_checkpoints(
                conn,
                tenant,
                thread_id=request.thread_id,
                checkpoint_ns=request.checkpoint_ns if request.HasField("checkpoint_ns") else None,
                checkpoint_id=request.checkpoint_id,
                before_checkpoint_id=request.before_checkpoint_id,
                metadata_filter=None if metadata_filter == "{}" else metadata_filter,
                after=(after[0], after[1], after[2]) if after is not None else None,
                limit=size + 1,
                budget=self.deps.process.page_max_bytes,
            )
            fitting = fit_page(
                rows, limit=size, budget=self.deps.process.page_max_bytes, size=item_bytes
            )
            page = await _tuples(conn, tenant, fitting)
        next_token = ""
        if len(page) < len(rows):
            last = page[-1].checkpoint
            next_token = PAGE.encode(
                (last.checkpoint_id, last.thread_id, last.checkpoint_ns), query
            )
        return memory_pb2.ListCheckpointsResponse(checkpoints=page, next_page_token=next_token)

    async def DeleteThread(
        self, request: memory_pb2.DeleteThreadRequest, context: ServicerContext
    ) -> memory_pb2.DeleteThreadResponse:
        check = Violations()
        check.text(request.thread_id, "thread_id", required=True, max_chars=MAX_ID_CHARS)
        check.raise_if_any()
        deleted = await db.delete_thread(self.deps.pool, self.tenant(), request.thread_id)
        return memory_pb2.DeleteThreadResponse(deleted_checkpoints=deleted)

    async def CopyThread(
        self, request: memory_pb2.CopyThreadRequest, context: ServicerContext
    ) -> memory_pb2.CopyThreadResponse:
        check = Violations()
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
                # A deleted session's thread: as a source it has no checkpoints to copy;
                # as a target it takes no writes.
                targets = await db.copy_targets(conn, tenant, source, target)
                if targets.target_hidden:
                    raise _deleted_session(target)
                if targets.source_hidden:
                    raise NotFound("thread", source)
                if targets.target_taken:
                    raise AlreadyExists("thread", target)
                copied = await db.copy_thread(conn, tenant, source, target)
                if copied == 0:
                    raise NotFound("thread", source)
        except asyncpg.UniqueViolationError:
            # A concurrent copy onto the same target won the race.
            raise AlreadyExists("thread", target) from None
        return memory_pb2.CopyThreadResponse(copied_checkpoints=copied)

    async def DeleteCheckpointsForRuns(
        self, request: memory_pb2.DeleteCheckpointsForRunsRequest, context: ServicerContext
    ) -> memory_pb2.DeleteCheckpointsForRunsResponse:
        check = Violations()
        _id_list(request.run_ids, "run_ids", check)
        check.raise_if_any()
        deleted = await db.delete_for_runs(
            self.deps.pool, self.tenant(), list(dict.fromkeys(request.run_ids))
        )
        return memory_pb2.DeleteCheckpointsForRunsResponse(deleted_checkpoints=deleted)

    async def PruneCheckpoints(
        self, request: memory_pb2.PruneCheckpointsRequest, context: ServicerContext
    ) -> memory_pb2.PruneCheckpointsResponse:
        check = Violations()
        _id_list(request.thread_ids, "thread_ids", check)
        if request.keep_latest < 1:
            check.add("keep_latest", "must be at least 1 (DeleteThread removes everything)")
        check.raise_if_any()
        async with self.deps.pool.acquire() as conn, conn.transaction():
            deleted = await db.prune(
                conn, self.tenant(), list(dict.fromkeys(request.thread_ids)), request.keep_latest
            )
        return memory_pb2.PruneCheckpointsResponse(deleted_checkpoints=deleted)
