"""Start-up checks of the long-term memory store: the configured dimension, the
migrated vector column, pgvector's version and the HNSW index's parameters must agree
with the settings (ConfigError otherwise). Also the connection defaults every search
relies on, and the migration step that builds the HNSW index with the configured
parameters (:func:`ensure_hnsw_index`, run by ``agentmesh.devstack.migrate up`` as the
schema owner: the service's own role may not run DDL, docs/adr/0018).

Housekeeping of the whole table, not of one tenant: nothing here takes a tenant.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

import asyncpg  # type: ignore[import-untyped]

from agentmesh.core.settings import ConfigError
from agentmesh.memory.settings import MemorySettings
from agentmesh.memory.stores.memory_search import INDEXED, INDEXED_ROWS, VECTOR_COLUMN_DIM

MIN_PGVECTOR: Final = (0, 8, 0)
"""``hnsw.iterative_scan`` (filtered search without losing recall) came in 0.8."""
HNSW_INDEX: Final = "memories_embedding_hnsw"


def search_session_settings(settings: MemorySettings) -> dict[str, str]:
    """Connection defaults for searches: ``hnsw.ef_search`` from the settings and
    ``relaxed_order`` iterative scans (the scan continues past filtered-out rows and
    may return slightly out of order, hence the re-sort in
    ``memory_search.run_search``)."""
    return {
        "hnsw.ef_search": str(settings.hnsw_ef_search),
        "hnsw.iterative_scan": "relaxed_order",
    }


def check_embedding_dimension(settings: MemorySettings) -> None:
    """The configured dimension must be the column's: fail at start, not per write."""
    if settings.embedding_dim != VECTOR_COLUMN_DIM:
        raise ConfigError(
            f"AGENTMESH_MEMORY_EMBEDDING_DIM={settings.embedding_dim}, but "
            f"memory.memories.embedding is vector({VECTOR_COLUMN_DIM}); changing it needs "
            "a migration that re-creates the column and re-embeds every memory"
        )


async def check_memory_store(pool: asyncpg.Pool, settings: MemorySettings) -> None:
    """Start-up check: the setting, the migrated column and pgvector's version agree."""
    check_embedding_dimension(settings)
    column = await pool.fetchval(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = to_regclass('memory.memories') AND attname = 'embedding'"
    )
    if column != f"vector({VECTOR_COLUMN_DIM})":
        raise ConfigError(
            f"memory.memories.embedding is {column or 'missing'}, expected "
            f"vector({VECTOR_COLUMN_DIM}); run the migrations"
        )
    version = await pool.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    parts = tuple(int(p) for p in re.findall(r"\d+", version or "0")[:3])
    if parts < MIN_PGVECTOR:
        raise ConfigError(f"pgvector {version} is too old: memories need 0.8.0 or later")


MIGRATE_COMMAND: Final = "python -m agentmesh.devstack.migrate up"
"""What builds the index with the configured parameters (``make migrate``, the
Kubernetes Job ``migrate``), named in the start-up refusal."""

_INDEX_OPTIONS_SQL: Final = (
    "SELECT c.reloptions || ('predicate=' || coalesce(pg_get_expr(i.indpred, i.indrelid), ''))"
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " JOIN pg_index i ON i.indexrelid = c.oid"
    " WHERE n.nspname = 'memory' AND c.relname = $1 AND c.relkind = 'i'"
)
"""The index's options, and its predicate as ``predicate=...``."""


def _reloptions(options: Sequence[str] | None) -> dict[str, str]:
    return dict(option.split("=", 1) for option in options or ())


def _wanted_options(settings: MemorySettings) -> dict[str, str]:
    return {
        "m": str(settings.hnsw_m),
        "ef_construction": str(settings.hnsw_ef_construction),
        "predicate": INDEXED_ROWS,
    }


async def check_hnsw_index(pool: asyncpg.Pool, settings: MemorySettings) -> None:
    """Start-up check: the HNSW index exists with the configured ``m`` /
    ``ef_construction``; :class:`ConfigError` naming the command that builds it
    otherwise. The service never builds it: its role may not run DDL (docs/adr/0018)."""
    found = await pool.fetchval(_INDEX_OPTIONS_SQL, HNSW_INDEX)
    wanted = _wanted_options(settings)
    if found is None:
        raise ConfigError(
            f"the HNSW index memory.{HNSW_INDEX} is missing; run the migrations "
            f"({MIGRATE_COMMAND}) with the Memory settings of this service"
        )
    current = _reloptions(found)
    if current != wanted:
        shown = ", ".join(f"{k}={current.get(k) or 'default'}" for k in wanted)
        raise ConfigError(
            f"the HNSW index memory.{HNSW_INDEX} was built with {shown}, but "
            f"AGENTMESH_MEMORY_HNSW_M={settings.hnsw_m}, "
            f"AGENTMESH_MEMORY_HNSW_EF_CONSTRUCTION={settings.hnsw_ef_construction} "
            f"and the predicate {INDEXED_ROWS} are wanted; "
            f"run {MIGRATE_COMMAND} with these settings to rebuild it, then start the service"
        )


async def ensure_hnsw_index(
    conn: asyncpg.Connection, settings: MemorySettings, *, maintenance_work_mem: str = "1GB"
) -> bool:
    """Migration step (run as the schema owner, never by the service): re-creates the
    HNSW index when it is missing or its ``m`` / ``ef_construction`` differ from the
    settings; returns whether it built. Safe to run from several places at once.

    The new index is built ``CONCURRENTLY`` under another name and swapped in, so the
    running replicas' writes and searches go on meanwhile. ``maintenance_work_mem``
    keeps the graph in memory during the build (at 100k × 384, 31 s with 1 GB against
    95 s with the 64 MB default); statement_timeout is lifted for the build only.
    """
    if await conn.fetchval("SELECT to_regclass('memory.memories')") is None:
        return False  # a migrations dir without the Memory tables: nothing to index
    wanted = _wanted_options(settings)
    if _reloptions(await conn.fetchval(_INDEX_OPTIONS_SQL, HNSW_INDEX)) == wanted:
        return False
    lock = "SELECT hashtextextended('memory.memories_embedding_hnsw rebuild', 0)"
    await conn.execute(f"SELECT pg_advisory_lock(({lock}))")
    try:
        # Another run may have rebuilt it while we waited for the lock.
        if _reloptions(await conn.fetchval(_INDEX_OPTIONS_SQL, HNSW_INDEX)) == wanted:
            return False
        await _rebuild_hnsw(conn, settings, maintenance_work_mem)
        return True
    finally:
        await conn.execute(f"SELECT pg_advisory_unlock(({lock}))")
        await conn.execute("RESET maintenance_work_mem; RESET statement_timeout")


async def _rebuild_hnsw(conn: asyncpg.Connection, settings: MemorySettings, work_mem: str) -> None:
    building = f"{HNSW_INDEX}_building"
    await conn.execute("SELECT set_config('maintenance_work_mem', $1, false)", work_mem)
    await conn.execute("SET statement_timeout = 0")
    # A build that died half-way leaves an INVALID index behind: start over.
    await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS memory.{building}")
    await conn.execute(
        f"CREATE INDEX CONCURRENTLY {building} ON memory.memories"
        f" USING hnsw (({INDEXED}) halfvec_cosine_ops)"
        f" WITH (m = {int(settings.hnsw_m)},"
        f" ef_construction = {int(settings.hnsw_ef_construction)}) WHERE {INDEXED_ROWS}"
    )
    await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS memory.{HNSW_INDEX}")
    await conn.execute(f"ALTER INDEX memory.{building} RENAME TO {HNSW_INDEX}")


async def prepare_memory_store(pool: asyncpg.Pool, settings: MemorySettings) -> None:
    """The start-up hook: checks only (ConfigError on a mismatch); no DDL."""
    await check_memory_store(pool, settings)
    await check_hnsw_index(pool, settings)
