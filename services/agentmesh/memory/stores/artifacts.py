"""Storage of versioned artifacts: a head row (``memory.artifacts``) plus immutable
versions (``memory.artifact_versions``).

A put allocates its version with one upsert on the head row (:func:`allocate_version`):
the row lock makes concurrent puts of one artifact queue up, so versions are 1, 2, 3…
with neither gaps nor duplicates, and what the put reads next (the version it
supersedes, for the etag check) cannot change before it commits. Every function takes
the tenant first; list conditions are built with ``core.sql.Where``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import asyncpg  # type: ignore[import-untyped]

from agentmesh.core.sql import PAGE_ITEM_BYTES, ROW_OVERHEAD_BYTES, Where, byte_budgeted

# Everything but the content, which List methods omit (and need not read).
_META: Final = """
    v.artifact_id, v.version, v.media_type, v.metadata, v.session_id, v.size_bytes,
    v.sha256, v.create_time
"""
_WITH_CONTENT: Final = _META + ", v.text, v.data"
_META_BYTES: Final = (
    f"octet_length(v.metadata::text) + octet_length(v.media_type) + {ROW_OVERHEAD_BYTES}"
    f" AS {PAGE_ITEM_BYTES}"
)
"""An artifact's size estimate in a page (content is never listed)."""
_LATEST: Final = """
    memory.artifacts h JOIN memory.artifact_versions v
      ON v.tenant = h.tenant AND v.artifact_id = h.id AND v.version = h.latest_version
"""


@dataclass(frozen=True, slots=True)
class NewVersion:
    """A validated version to store (text or data, never both)."""

    artifact_id: str
    media_type: str
    text: str | None
    data: bytes | None
    metadata: str
    """JSON object text (``jsonb``)."""
    session_id: str | None
    size_bytes: int
    sha256: str


@dataclass(frozen=True, slots=True)
class ArtifactFilter:
    """What ListArtifacts keeps, matched on each artifact's latest version: every
    condition must hold (several of one kind too)."""

    session_ids: Sequence[str] = ()
    media_types: Sequence[str] = ()
    """Lower case, as stored."""


# ----------------------------------------------------------------------- writes


async def allocate_version(conn: asyncpg.Connection, tenant: str, new: NewVersion) -> int:
    """The version ``new`` becomes: creates the head (version 1) or bumps it, holding
    its row lock until the transaction ends. The head mirrors the newest version's
    session and media type for ListArtifacts."""
    version: int = await conn.fetchval(
        """
        INSERT INTO memory.artifacts AS head (tenant, id, latest_version, session_id, media_type)
        VALUES ($1, $2, 1, $3, $4)
        ON CONFLICT (tenant, id) DO UPDATE
            SET latest_version = head.latest_version + 1,
                session_id = EXCLUDED.session_id,
                media_type = EXCLUDED.media_type,
                update_time = now()
        RETURNING latest_version
        """,
        tenant,
        new.artifact_id,
        new.session_id,
        new.media_type,
    )
    return version


async def version_sha256(
    conn: asyncpg.Connection, tenant: str, artifact_id: str, version: int
) -> str | None:
    """The content hash of one version (what its etag is made of); None if there is
    no such version."""
    sha256: str | None = await conn.fetchval(
        "SELECT sha256 FROM memory.artifact_versions"
        " WHERE tenant = $1 AND artifact_id = $2 AND version = $3",
        tenant,
        artifact_id,
        version,
    )
    return sha256


async def insert_version(
    conn: asyncpg.Connection, tenant: str, new: NewVersion, version: int
) -> asyncpg.Record:
    """Stores version ``version`` (from :func:`allocate_version`); returns its row, with
    the content."""
    return await conn.fetchrow(
        f"""
        INSERT INTO memory.artifact_versions AS v (
            tenant, artifact_id, version, media_type, text, data, metadata, session_id,
            size_bytes, sha256
        )
        VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10)
        RETURNING {_WITH_CONTENT}
        """,
        tenant,
        new.artifact_id,
        version,
        new.media_type,
        new.text,
        new.data,
        new.metadata,
        new.session_id,
        new.size_bytes,
        new.sha256,
    )


async def delete_artifact(pool: asyncpg.Pool, tenant: str, artifact_id: str) -> bool:
    """Deletes the artifact and, with it (ON DELETE CASCADE, in this one statement),
    every version; False when the tenant had no such artifact."""
    deleted = await pool.fetchval(
        "DELETE FROM memory.artifacts WHERE tenant = $1 AND id = $2 RETURNING id",
        tenant,
        artifact_id,
    )
    return deleted is not None


# ------------------------------------------------------------------------ reads


async def artifact_exists(pool: asyncpg.Pool, tenant: str, artifact_id: str) -> bool:
    found = await pool.fetchval(
        "SELECT true FROM memory.artifacts WHERE tenant = $1 AND id = $2",
        tenant,
        artifact_id,
    )
    return bool(found)


async def get_version(
    pool: asyncpg.Pool, tenant: str, artifact_id: str, version: int
) -> asyncpg.Record | None:
    """One version with its content; ``version`` 0 means the latest. None if absent."""
    if version == 0:
        return await pool.fetchrow(
            f"SELECT {_WITH_CONTENT} FROM {_LATEST} WHERE h.tenant = $1 AND h.id = $2",
            tenant,
            artifact_id,
        )
    return await pool.fetchrow(
        f"SELECT {_WITH_CONTENT} FROM memory.artifact_versions v"
        " WHERE v.tenant = $1 AND v.artifact_id = $2 AND v.version = $3",
        tenant,
        artifact_id,
        version,
    )


async def list_artifacts(
    pool: asyncpg.Pool,
    tenant: str,
    where: ArtifactFilter,
    *,
    after_id: str | None,
    limit: int,
    budget: int,
) -> list[asyncpg.Record]:
    """The latest version of each of the tenant's artifacts matching ``where``, without
    content, by id, starting after ``after_id``; cut at ``budget`` bytes."""
    sql = Where(tenant, column="h.tenant")
    for session_id in where.session_ids:
        sql.add("h.session_id = {}", session_id)
    for media_type in where.media_types:
        sql.add("h.media_type = {}", media_type)
    if after_id is not None:
        sql.add("h.id > {}", after_id)
    inner = (
        f"SELECT {_META}, {_META_BYTES} FROM {_LATEST} WHERE {sql.sql}"
        f" ORDER BY h.id LIMIT {int(limit)}"
    )
    rows: list[asyncpg.Record] = await pool.fetch(
        byte_budgeted(inner, order="artifact_id", budget=budget), *sql.args
    )
    return rows


async def list_versions(
    pool: asyncpg.Pool,
    tenant: str,
    artifact_id: str,
    *,
    before_version: int | None,
    limit: int,
    budget: int,
) -> list[asyncpg.Record]:
    """The versions of one artifact, without content, newest first, starting below
    ``before_version``; cut at ``budget`` bytes."""
    sql = Where(tenant, column="v.tenant")
    sql.add("v.artifact_id = {}", artifact_id)
    if before_version is not None:
        sql.add("v.version < {}", before_version)
    inner = (
        f"SELECT {_META}, {_META_BYTES} FROM memory.artifact_versions v WHERE {sql.sql}"
        f" ORDER BY v.version DESC LIMIT {int(limit)}"
    )
    rows: list[asyncpg.Record] = await pool.fetch(
        byte_budgeted(inner, order="version DESC", budget=budget), *sql.args
    )
    return rows
