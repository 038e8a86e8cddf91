"""Storage of sessions: what other domains need of a session (its liveness, its
working-memory key, its threads), shared by the session RPCs, messages, working memory,
checkpoints and the janitor. Every function takes the tenant first.

By convention a session's LangGraph threads have ``thread_id = <session id>`` or start
with ``<session id>:``; they go with the session when it is purged.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

import asyncpg  # type: ignore[import-untyped]
import redis.asyncio

from agentmesh.core.errors import NotFound
from agentmesh.core.names import SESSIONS

LIVE: Final = "delete_time IS NULL"
"""SQL condition on ``memory.sessions``: the session is not deleted. Every read and write
of a session or what it holds adds it, so a deleted session is NOT_FOUND everywhere."""


async def session_create_time(conn: asyncpg.Connection, tenant: str, session_id: str) -> datetime:
    """The create time of the tenant's live session (it tells incarnations of one id
    apart); NOT_FOUND when the tenant has no such session or it is deleted."""
    created: datetime | None = await conn.fetchval(
        f"SELECT create_time FROM memory.sessions WHERE tenant = $1 AND id = $2 AND {LIVE}",
        tenant,
        session_id,
    )
    if created is None:
        raise NotFound(SESSIONS.resource_type, SESSIONS.format(session_id))
    return created


def working_memory_key(tenant: str, session_id: str) -> str:
    """The Redis hash of a session's working memory. Session ids never contain ':',
    so the key is unambiguous even for tenants that do."""
    return f"agentmesh:wm:{tenant}:{session_id}"


async def delete_session_threads(
    conn: asyncpg.Connection,
    tenant: str,
    session_id: str,
    *,
    tables: Sequence[str] = ("memory.checkpoint_writes", "memory.checkpoints"),
) -> None:
    """Deletes the LangGraph checkpoints of a session's threads, in the caller's transaction.

    Hook for the checkpoint tables, which another module owns: by convention a
    session's threads have ``thread_id = <session id>`` or start with ``<session id>:``,
    and each table has ``tenant`` and ``thread_id`` columns. A table that does not exist
    (yet) is skipped (``to_regclass``), so sessions work before checkpoints land.
    ``tables`` is a parameter only so tests can point the hook at scratch tables.
    """
    # Session ids are [a-z0-9-], so the LIKE pattern has no wildcard to escape.
    prefix = session_id + ":%"
    for table in tables:
        regclass = await conn.fetchval("SELECT to_regclass($1)::text", table)
        if regclass is None:
            continue
        await conn.execute(
            f"DELETE FROM {regclass}"  # a name the catalog resolved, not client input
            " WHERE tenant = $1 AND (thread_id = $2 OR thread_id LIKE $3)",
            tenant,
            session_id,
            prefix,
        )


def thread_session_deleted(thread: str) -> str:
    """SQL condition: the thread ``thread`` (an SQL expression, a column or a parameter)
    belongs to a deleted session of the tenant ``$1``. By convention a session's threads
    are ``<session id>`` and ``<session id>:<suffix>``, so the owner is the part before
    the first ``:``; threads of no session (LangGraph's UUIDs) never match. Served by
    the partial index of deleted sessions."""
    # COLLATE: thread ids are "C", session ids the database's; compare as the index does.
    return (
        "EXISTS (SELECT 1 FROM memory.sessions AS s WHERE s.tenant = $1"
        f" AND s.id = split_part({thread}, ':', 1) COLLATE \"default\""
        " AND s.delete_time IS NOT NULL)"
    )


def thread_session_id(thread_id: str) -> str:
    """The session id a thread id would belong to (see ``thread_session_deleted``)."""
    return thread_id.split(":", 1)[0]


async def purge_due_session(
    conn: asyncpg.Connection, redis_client: redis.asyncio.Redis, tenant: str, session_id: str
) -> bool:
    """Purges the tenant's session if it is deleted and past its purge time, as the
    janitor would, in the caller's transaction: the row (its messages cascade), its
    threads' checkpoints, its working memory. Returns whether it did."""
    purged = await conn.fetchval(
        "DELETE FROM memory.sessions WHERE tenant = $1 AND id = $2 AND purge_time <= now()"
        " RETURNING id",
        tenant,
        session_id,
    )
    if purged is None:
        return False
    await delete_session_threads(conn, tenant, session_id)
    # Redis last: if it fails, the transaction rolls back and nothing is half-purged.
    await redis_client.delete(working_memory_key(tenant, session_id))
    return True
