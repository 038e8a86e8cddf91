"""Storage of sessions: the session RPCs' SQL, and what other domains need of a session
(its liveness, its working-memory key, its threads), shared by messages, working memory,
checkpoints and the janitor. Every function takes the tenant first.

Deletion is soft unless the purge delay is 0: ``soft_delete_session`` stamps
``delete_time`` and ``purge_time`` and keeps the row with its messages, checkpoints and
working memory; every read and write treats the session as missing (``LIVE``), its id
stays taken, ``undelete_session`` clears the stamps before the purge time, and the
janitor (or ``purge_due_session``) purges it afterwards.

By convention a session's LangGraph threads have ``thread_id = <session id>`` or start
with ``<session id>:``; they go with the session when it is purged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Final
from uuid import UUID

import asyncpg  # type: ignore[import-untyped]
import redis.asyncio

from agentmesh.core.errors import NotFound
from agentmesh.core.filtering import Term, timestamp_value
from agentmesh.core.names import SESSIONS
from agentmesh.core.sql import PAGE_ITEM_BYTES, ROW_OVERHEAD_BYTES, Where, byte_budgeted
from agentmesh.memory.domain.sessions import Holder

LIVE: Final = "delete_time IS NULL"
"""SQL condition on ``memory.sessions``: the session is not deleted. Every read and write
of a session or what it holds adds it, so a deleted session is NOT_FOUND everywhere."""
NOT_PURGED: Final = "(delete_time IS NULL OR purge_time > now())"
"""Live, or deleted and still within its purge window (what ``show_deleted`` lists)."""
COLUMNS: Final = (
    "id, display_name, labels, metadata, message_count, last_sequence, version,"
    " incarnation, create_time, update_time, delete_time, purge_time"
)
"""The columns of a session row as the RPCs return it."""
_ITEM_BYTES: Final = (
    "octet_length(display_name) + octet_length(labels::text) + octet_length(metadata::text)"
    f" + {ROW_OVERHEAD_BYTES}"
)
"""A session's size estimate in a page."""
_ETAG_MATCHES: Final = "($3::bigint IS NULL OR (version = $3 AND incarnation = $4::uuid))"
"""A conditional write's etag check: none given ($3 NULL), or the version ($3) of the
incarnation ($4) it names. An etag matches only its own incarnation of the id."""


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
    await _delete_held(conn, redis_client, tenant, session_id)
    return True


async def _delete_held(
    conn: asyncpg.Connection, redis_client: redis.asyncio.Redis, tenant: str, session_id: str
) -> None:
    """What a session holds besides its messages (which cascade with its row): its
    threads' checkpoints and its working memory, in the caller's transaction."""
    await delete_session_threads(conn, tenant, session_id)
    # Redis last and still inside the transaction: if it fails, the delete rolls back
    # and a retry removes everything; working memory left by a racing update is ignored
    # by the next incarnation of the id (stores/working.py).
    await redis_client.delete(working_memory_key(tenant, session_id))


_DUE_SESSIONS: Final = """
SELECT tenant, id FROM memory.sessions WHERE purge_time <= now()
ORDER BY purge_time LIMIT $1
FOR UPDATE SKIP LOCKED
"""
"""Deleted sessions past their purge time, locked: an UndeleteSession racing the purge
either restored the session before (then it is not due) or waits and finds it gone."""


async def purge_due_sessions(
    conn: asyncpg.Connection, redis_client: redis.asyncio.Redis, limit: int
) -> int:
    """Purges at most ``limit`` deleted sessions past their purge time, of every tenant
    (the janitor's housekeeping), in one transaction: each row (its messages cascade),
    its threads' checkpoints and its working memory. Returns how many."""
    async with conn.transaction():
        due = await conn.fetch(_DUE_SESSIONS, limit)
        if not due:
            return 0
        for row in due:
            await delete_session_threads(conn, row["tenant"], row["id"])
        await conn.execute(
            "DELETE FROM memory.sessions AS s"
            " USING unnest($1::text[], $2::text[]) AS d (tenant, id)"
            " WHERE s.tenant = d.tenant AND s.id = d.id",
            [row["tenant"] for row in due],
            [row["id"] for row in due],
        )
        # Redis last, inside the transaction (as DeleteSession does): if it fails, the
        # batch rolls back and the next pass purges it whole.
        await redis_client.delete(*(working_memory_key(row["tenant"], row["id"]) for row in due))
    return len(due)


# ------------------------------------------------------------------ the session RPCs


async def get_session(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: str, session_id: str
) -> asyncpg.Record | None:
    """The tenant's live session (``COLUMNS``), or None."""
    return await conn.fetchrow(
        f"SELECT {COLUMNS} FROM memory.sessions WHERE tenant = $1 AND id = $2 AND {LIVE}",
        tenant,
        session_id,
    )


async def session_is_live(conn: asyncpg.Connection, tenant: str, session_id: str) -> bool:
    """Whether the tenant has this session and it is not deleted."""
    found: bool = await conn.fetchval(
        f"SELECT EXISTS (SELECT 1 FROM memory.sessions WHERE tenant = $1 AND id = $2 AND {LIVE})",
        tenant,
        session_id,
    )
    return found


async def session_holder(conn: asyncpg.Connection, tenant: str, session_id: str) -> Holder | None:
    """What holds the tenant's id (live or deleted, purged or not), or None."""
    row = await conn.fetchrow(
        "SELECT delete_time, purge_time FROM memory.sessions WHERE tenant = $1 AND id = $2",
        tenant,
        session_id,
    )
    return None if row is None else Holder(row["delete_time"], row["purge_time"])


def _filter_sql(where: Where, terms: Sequence[Term]) -> None:
    """Adds the parsed filter terms to ``where``. Field names and operators come from
    the RPC's allow-list of filter fields, never from raw input."""
    for term in terms:
        if term.field.startswith("labels."):
            where.add("labels @> {}::jsonb", json.dumps({term.key: term.value}))
        else:
            where.add(f"{term.field} {term.op} {{}}", timestamp_value(term.value))


async def list_sessions(
    conn: asyncpg.Connection | asyncpg.Pool,
    tenant: str,
    *,
    terms: Sequence[Term],
    show_deleted: bool,
    after: tuple[datetime, str] | None,
    limit: int,
    budget: int,
) -> list[asyncpg.Record]:
    """The tenant's sessions matching ``terms``, newest first (then by id), after the
    position ``after`` (create time, id) of the previous page; at most ``limit``, cut
    at ``budget`` bytes. Live ones, or with ``show_deleted`` also the deleted ones not
    purged yet."""
    where = Where(tenant)
    where.add(NOT_PURGED if show_deleted else LIVE)
    _filter_sql(where, terms)
    if after is not None:
        created, last_id = after
        where.add("(create_time < {} OR (create_time = {} AND id > {}))", created, created, last_id)
    inner = (
        f"SELECT {COLUMNS}, {_ITEM_BYTES} AS {PAGE_ITEM_BYTES} FROM memory.sessions"
        f" WHERE {where.sql} ORDER BY create_time DESC, id LIMIT {where.param(limit)}"
    )
    sql = byte_budgeted(inner, order="create_time DESC, id", budget=budget)
    rows: list[asyncpg.Record] = await conn.fetch(sql, *where.args)
    return rows


async def insert_session(
    conn: asyncpg.Pool | asyncpg.Connection,
    tenant: str,
    session_id: str,
    display_name: str,
    labels: str,
    metadata: str | None,
) -> asyncpg.Record | None:
    """Inserts a session (labels and metadata as JSON text); None when the tenant's id
    is taken (live or deleted)."""
    return await conn.fetchrow(
        "INSERT INTO memory.sessions (tenant, id, display_name, labels, metadata)"
        " VALUES ($1, $2, $3, $4::jsonb, $5::jsonb)"
        f" ON CONFLICT (tenant, id) DO NOTHING RETURNING {COLUMNS}",
        tenant,
        session_id,
        display_name,
        labels,
        metadata,
    )


async def update_session(
    conn: asyncpg.Connection,
    tenant: str,
    session_id: str,
    expected: tuple[int, UUID | None] | None,
    *,
    display_name: str | None,
    labels: str | None,
    metadata: str | None,
) -> asyncpg.Record | None:
    """Writes the given fields of a live session (None keeps the stored value; labels
    and metadata as JSON text) if its etag is ``expected`` (version, incarnation) or
    none is expected; None when no row matched (missing, deleted or another etag)."""
    # One static statement that checks the etag and writes: the happy path is one
    # round trip.
    version, incarnation = expected or (None, None)
    return await conn.fetchrow(
        "UPDATE memory.sessions SET"
        " display_name = COALESCE($5, display_name),"
        " labels = COALESCE($6::jsonb, labels),"
        " metadata = COALESCE($7::jsonb, metadata),"
        " version = version + 1, update_time = now()"
        f" WHERE tenant = $1 AND id = $2 AND {LIVE} AND {_ETAG_MATCHES}"
        f" RETURNING {COLUMNS}",
        tenant,
        session_id,
        version,
        incarnation,
        display_name,
        labels,
        metadata,
    )


async def soft_delete_session(
    conn: asyncpg.Connection,
    tenant: str,
    session_id: str,
    expected: tuple[int, UUID | None] | None,
    *,
    purge_after_s: int,
) -> bool:
    """Stamps a live session deleted, to be purged ``purge_after_s`` seconds from now,
    if its etag is ``expected`` or none is; whether a row matched. Everything it holds
    stays until the purge. The version moves, so etags read before the delete are stale
    after an undelete."""
    version, incarnation = expected or (None, None)
    deleted = await conn.fetchval(
        "UPDATE memory.sessions SET delete_time = now(),"
        " purge_time = now() + make_interval(secs => $5), version = version + 1"
        f" WHERE tenant = $1 AND id = $2 AND {LIVE} AND {_ETAG_MATCHES} RETURNING id",
        tenant,
        session_id,
        version,
        incarnation,
        float(purge_after_s),
    )
    return deleted is not None


async def hard_delete_session(
    conn: asyncpg.Connection,
    redis_client: redis.asyncio.Redis,
    tenant: str,
    session_id: str,
    expected: tuple[int, UUID | None] | None,
) -> bool:
    """Deletes a live session if its etag is ``expected`` or none is, in the caller's
    transaction, with all it holds: its messages (ON DELETE CASCADE), its threads'
    checkpoints, its working memory. Returns whether a row matched."""
    version, incarnation = expected or (None, None)
    deleted = await conn.fetchval(
        "DELETE FROM memory.sessions"
        f" WHERE tenant = $1 AND id = $2 AND {LIVE} AND {_ETAG_MATCHES} RETURNING id",
        tenant,
        session_id,
        version,
        incarnation,
    )
    if deleted is None:
        return False
    await _delete_held(conn, redis_client, tenant, session_id)
    return True


async def undelete_session(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: str, session_id: str
) -> asyncpg.Record | None:
    """Clears the deletion of a deleted session before its purge time (``COLUMNS``);
    None when no such session is there to undelete. Past its purge time a session is
    purged for every purpose, whether or not the janitor has removed the row yet. The
    version moves: a new etag."""
    return await conn.fetchrow(
        "UPDATE memory.sessions SET delete_time = NULL, purge_time = NULL,"
        " version = version + 1"
        " WHERE tenant = $1 AND id = $2 AND delete_time IS NOT NULL AND purge_time > now()"
        f" RETURNING {COLUMNS}",
        tenant,
        session_id,
    )
