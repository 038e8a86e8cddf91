"""The Memory janitor: purges what has expired or outlived its purge window.

Reads already ignore all of it; the janitor reclaims the space, and for deleted
sessions it is what makes a deletion final. Every ``AGENTMESH_MEMORY_JANITOR_INTERVAL_S``
(0 disables it) each replica runs :func:`run_janitor_pass`, which deletes

- ``memories``: memories past their ``expire_time``;
- ``request_ids``: idempotency keys past their ``expire_time`` (``core.idempotency``
  reuses such a key anyway; this only removes the rows);
- ``store_items``: LangGraph store items past their ``expire_time`` (writes of the same
  tenant sweep these too; the janitor also catches tenants that stopped writing);
- ``sessions``: deleted sessions past their ``purge_time``, each with its messages
  (``ON DELETE CASCADE``), the checkpoints and writes of its threads
  and its working memory in Redis (``stores.sessions.purge_due_sessions``): what a hard
  DeleteSession removes.

Only one replica works at a time: a pass first takes a PostgreSQL advisory lock
(``pg_try_advisory_lock``) and, when another replica holds it, does nothing. The lock
belongs to a connection the pass opens for itself and closes at the end, whatever
happened, and closing it releases the lock: the pool's connections stay free of
session state (``core.db`` resets nothing on release), and a pass cut short can never
leave the lock held. Deletions go in batches of at most
``AGENTMESH_MEMORY_JANITOR_BATCH_SIZE`` rows (sessions: at most 100, each takes its
history along), each batch its own short transaction, so a backlog never holds locks
for long and what a batch did stays done if a later one fails.

A pass that fails (database or Redis down, a statement timeout) is logged and counted;
the next interval tries again. It never stops the service.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import asyncpg  # type: ignore[import-untyped]
import redis.asyncio
import structlog
from prometheus_client import Counter

from agentmesh.core.outages import as_unavailable
from agentmesh.core.settings import Settings
from agentmesh.core.tasks import stop_task
from agentmesh.memory.deps import memory_request_ids
from agentmesh.memory.settings import MemorySettings
from agentmesh.memory.stores.memories import purge_expired_memories
from agentmesh.memory.stores.sessions import purge_due_sessions
from agentmesh.memory.stores.store_items import purge_expired_store_items

LOCK_KEY: Final = int.from_bytes(b"am:janit")
"""The advisory lock of the janitor (one 64-bit key, the same in every replica)."""
SESSIONS_PER_BATCH: Final = 100
"""Deleted sessions purged per transaction at most: each takes its messages and
checkpoints with it, so they go in smaller batches than plain rows."""
KINDS: Final = ("memories", "request_ids", "store_items", "sessions")
"""What a pass purges, in order; the ``kind`` label of ``PURGED``."""
_CONNECT_TIMEOUT_S: Final = 10.0

PURGED: Final = Counter(
    "agentmesh_memory_janitor_purged_total",
    "Rows the Memory janitor purged, by kind: expired memories, request_ids and"
    " store_items, and deleted sessions past their purge time (each session counts once;"
    " its messages, checkpoints and working memory go with it).",
    ("kind",),
)
PASSES: Final = Counter(
    "agentmesh_memory_janitor_passes_total",
    "Memory janitor passes by outcome: done, skipped (another replica held the lock),"
    " failed (logged; the next interval tries again).",
    ("outcome",),
)
for _kind in KINDS:  # every series exists from the start, at 0
    PURGED.labels(_kind)
for _outcome in ("done", "skipped", "failed"):
    PASSES.labels(_outcome)


@dataclass(frozen=True)
class JanitorReport:
    """What one pass did."""

    ran: bool
    """False when another replica held the lock, so this pass did nothing."""
    memories: int = 0
    request_ids: int = 0
    store_items: int = 0
    sessions: int = 0


async def _connect(settings: Settings) -> asyncpg.Connection:
    """The pass's own connection (see the module docstring), with the pool's limits."""
    settings.require("database_url")
    return await asyncpg.connect(
        settings.database_url,
        timeout=_CONNECT_TIMEOUT_S,
        server_settings={
            "application_name": f"agentmesh-{settings.service}-janitor",
            "statement_timeout": str(settings.db_statement_timeout_ms),
        },
    )


async def _drain(kind: str, batch: Callable[[int], Awaitable[int]], limit: int) -> int:
    """Runs ``batch`` until one deletes fewer than ``limit`` rows; returns the total."""
    total = 0
    while True:
        deleted = await batch(limit)
        PURGED.labels(kind).inc(deleted)  # per batch: what committed counts, even if
        total += deleted  # a later batch fails
        if deleted < limit:
            return total


async def run_janitor_pass(
    settings: Settings,
    memory: MemorySettings,
    redis_client: redis.asyncio.Redis,
    *,
    lock_key: int = LOCK_KEY,
) -> JanitorReport:
    """One janitor pass (see the module docstring): under the advisory lock ``lock_key``,
    purges every due row in batches; returns the counts, or ``ran=False`` when another
    pass holds the lock. Raises what the database or Redis raise; the loop
    (:func:`run_janitor`) logs it. ``lock_key`` is a parameter for tests only."""
    conn = await _connect(settings)
    try:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_key):
            return JanitorReport(ran=False)
        size = memory.janitor_batch_size

        request_ids = memory_request_ids(memory)
        memories = await _drain(
            "memories", lambda limit: purge_expired_memories(conn, limit=limit), size
        )
        request_id_rows = await _drain(
            "request_ids", lambda limit: request_ids.purge_expired(conn, limit), size
        )
        store_items = await _drain(
            "store_items", lambda limit: purge_expired_store_items(conn, limit), size
        )
        sessions = await _drain(
            "sessions",
            lambda limit: purge_due_sessions(conn, redis_client, limit),
            min(size, SESSIONS_PER_BATCH),
        )
        return JanitorReport(
            ran=True,
            memories=memories,
            request_ids=request_id_rows,
            store_items=store_items,
            sessions=sessions,
        )
    finally:
        # Ending the session releases the lock; terminate() if a clean close fails.
        try:
            await conn.close(timeout=5)
        except BaseException:
            conn.terminate()
            raise


async def janitor_pass(
    settings: Settings,
    memory: MemorySettings,
    redis_client: redis.asyncio.Redis,
    *,
    lock_key: int = LOCK_KEY,
) -> JanitorReport | None:
    """One pass as the loop runs it: logged (one line), counted, never raising (except
    on cancellation). Returns the report, or None when the pass failed."""
    log = structlog.get_logger("agentmesh.memory.janitor")
    started = time.monotonic()
    try:
        report = await run_janitor_pass(settings, memory, redis_client, lock_key=lock_key)
    except Exception as exc:
        PASSES.labels("failed").inc()
        duration_ms = round((time.monotonic() - started) * 1000)
        if isinstance(exc, OSError) or as_unavailable(exc) is not None:
            # An outage (health says so too): one line, no stack trace.
            log.warning("janitor pass failed", error=repr(exc), duration_ms=duration_ms)
        else:
            log.exception("janitor pass failed", error=repr(exc), duration_ms=duration_ms)
        return None
    duration_ms = round((time.monotonic() - started) * 1000)
    if not report.ran:
        PASSES.labels("skipped").inc()
        # Every other replica skips every interval: not worth a line at info.
        log.debug("janitor pass skipped: another replica holds the lock", duration_ms=duration_ms)
        return report
    PASSES.labels("done").inc()
    log.info(
        "janitor pass",
        memories=report.memories,
        request_ids=report.request_ids,
        store_items=report.store_items,
        sessions=report.sessions,
        duration_ms=duration_ms,
    )
    return report


async def run_janitor(
    settings: Settings, memory: MemorySettings, redis_client: redis.asyncio.Redis
) -> None:
    """Runs :func:`janitor_pass` every ``janitor_interval_s`` (the first one after one
    interval) until cancelled."""
    while True:
        await asyncio.sleep(memory.janitor_interval_s)
        await janitor_pass(settings, memory, redis_client)


def start_janitor(
    settings: Settings, memory: MemorySettings, redis_client: redis.asyncio.Redis
) -> asyncio.Task[None] | None:
    """The janitor as a background task of the running loop (named ``memory-janitor``),
    or None when ``janitor_interval_s`` is 0. Stop it with :func:`stop_janitor`."""
    if not memory.janitor_interval_s:
        return None
    return asyncio.create_task(run_janitor(settings, memory, redis_client), name="memory-janitor")


async def stop_janitor(task: asyncio.Task[None] | None) -> None:
    """Cancels the janitor and waits for it: a pass in progress stops between (or in)
    statements; its open batch rolls back and its connection closes."""
    await stop_task(task, what="memory janitor", timeout_s=30.0)
