"""What one tenant stores, per kind of data: rows and bytes in storage.

Bytes are ``pg_column_size`` of the stored values (after TOAST compression: what the
tenant costs in storage), read without decompressing them. Each query walks the
tenant's rows through an index whose first column is the tenant.
"""

from __future__ import annotations

from typing import Final

import asyncpg  # type: ignore[import-untyped]

from agentmesh.memory.domain.quotas import Usage

_QUERIES: Final = {
    "sessions": "SELECT count(*), coalesce(sum(pg_column_size(metadata)"
    " + pg_column_size(labels)), 0) FROM memory.sessions WHERE tenant = $1",
    "messages": "SELECT count(*), coalesce(sum(pg_column_size(parts)"
    " + pg_column_size(metadata)), 0) FROM memory.messages WHERE tenant = $1",
    "memories": "SELECT count(*), coalesce(sum(pg_column_size(content)"
    " + pg_column_size(metadata) + coalesce(pg_column_size(embedding), 0)), 0)"
    " FROM memory.memories WHERE tenant = $1",
    "store_items": "SELECT count(*), coalesce(sum(pg_column_size(value)"
    " + coalesce(pg_column_size(embedding), 0)), 0) FROM memory.store_items WHERE tenant = $1",
    "checkpoints": "SELECT (SELECT count(*) FROM memory.checkpoints WHERE tenant = $1),"
    " coalesce((SELECT sum(pg_column_size(checkpoint) + pg_column_size(metadata))"
    " FROM memory.checkpoints WHERE tenant = $1), 0)"
    " + coalesce((SELECT sum(pg_column_size(value)) FROM memory.checkpoint_writes"
    " WHERE tenant = $1), 0)",
    "artifacts": "SELECT count(*), coalesce(sum(size_bytes), 0)"
    " FROM memory.artifact_versions WHERE tenant = $1",
}


async def measure(db: asyncpg.Pool | asyncpg.Connection, tenant: str, kind: str) -> Usage:
    """The tenant's stored rows and bytes of ``kind`` (one of ``domain.quotas.KINDS``)."""
    row = await db.fetchrow(_QUERIES[kind], tenant)
    return Usage(rows=int(row[0]), bytes=int(row[1]))
