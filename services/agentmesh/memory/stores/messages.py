"""Storage of message history: append and list. Every function takes the tenant first.

Sequence numbers are allocated in exactly one place, ``append_messages``: under a row
lock on the session (``SELECT ... FOR UPDATE``), which serialises appends per session,
the batch takes ``last_sequence + 1 .. + n`` (``domain.messages.allocate``) and the
session row records the new ``last_sequence`` in the same transaction. Concurrent
appends therefore queue on the lock and never collide or leave gaps; appends to
different sessions do not contend at all.

Parts are stored as a ``jsonb`` array in the protobuf JSON mapping: an operator can
read a conversation with psql, later features (full-text search over history,
exports) can query it in SQL, and it is the same shape the HTTP API shows. The costs
are base64 for inline blobs (a third larger) and json_format's CPU per part; both
are small next to the database round trips of an append.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import asyncpg  # type: ignore[import-untyped]

from agentmesh.core.errors import NotFound
from agentmesh.core.names import SESSIONS, new_id
from agentmesh.core.sql import PAGE_ITEM_BYTES, ROW_OVERHEAD_BYTES, Where, byte_budgeted
from agentmesh.memory.domain.messages import allocate
from agentmesh.memory.stores.sessions import LIVE

COLUMNS: Final = (
    "session_id, sequence, message_id, role, parts, agent, tool_call_id, token_count,"
    " metadata, create_time"
)
"""The columns of a message row as the RPCs return it."""
_ITEM_BYTES: Final = (
    f"octet_length(parts::text) + octet_length(metadata::text) + {ROW_OVERHEAD_BYTES}"
)
"""A message's size estimate in a page."""


@dataclass(frozen=True, slots=True)
class NewMessage:
    """One message of an append, its columns ready for storage."""

    message_id: str
    """The client's id, or "" for a fresh one."""
    role: str
    parts_json: str
    agent: str
    tool_call_id: str
    token_count: int
    metadata_json: str


@dataclass(frozen=True, slots=True)
class Appended:
    """A message this append stored: the ``index``-th of the batch, with what storage
    gave it."""

    index: int
    message_id: str
    sequence: int
    create_time: datetime


async def _stored_by_id(
    conn: asyncpg.Connection, tenant: str, session_id: str, message_ids: list[str]
) -> dict[str, asyncpg.Record]:
    if not message_ids:
        return {}
    rows = await conn.fetch(
        f"SELECT {COLUMNS} FROM memory.messages"
        " WHERE tenant = $1 AND session_id = $2 AND message_id = ANY($3::text[])",
        tenant,
        session_id,
        message_ids,
    )
    return {row["message_id"]: row for row in rows}


async def _insert(
    conn: asyncpg.Connection,
    tenant: str,
    session_id: str,
    rows: list[tuple[Appended, NewMessage]],
) -> None:
    """All new rows in one statement (one round trip, whatever the batch size)."""
    await conn.execute(
        "INSERT INTO memory.messages (tenant, session_id, sequence, message_id, role, parts,"
        " agent, tool_call_id, token_count, metadata)"
        " SELECT $1, $2, s, m, r, p::jsonb, a, t, c, md::jsonb"
        " FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[],"
        " $8::text[], $9::bigint[], $10::text[]) AS u(s, m, r, p, a, t, c, md)",
        tenant,
        session_id,
        [stored.sequence for stored, _ in rows],
        [stored.message_id for stored, _ in rows],
        [item.role for _, item in rows],
        [item.parts_json for _, item in rows],
        [item.agent for _, item in rows],
        [item.tool_call_id for _, item in rows],
        [item.token_count for _, item in rows],
        [item.metadata_json for _, item in rows],
    )


async def append_messages(
    conn: asyncpg.Connection, tenant: str, session_id: str, incoming: Sequence[NewMessage]
) -> list[asyncpg.Record | Appended]:
    """Appends in the caller's transaction; the one place sequences are allocated.

    Answers each message of the batch, in order: the stored row (``COLUMNS``) when its
    id was stored before, else what this append stored (for an id repeated in the
    batch, its first place). NOT_FOUND when the session is not live."""
    # A deleted session is NOT_FOUND; a DeleteSession racing this append waits on the
    # lock or makes it wait, so the append lands before the delete or not at all.
    locked = await conn.fetchrow(
        "SELECT last_sequence, now() AS now FROM memory.sessions"
        f" WHERE tenant = $1 AND id = $2 AND {LIVE} FOR UPDATE",
        tenant,
        session_id,
    )
    if locked is None:
        raise NotFound(SESSIONS.resource_type, SESSIONS.format(session_id))
    # Read under the lock, so a concurrent append of the same message_id has committed
    # (and is seen here) or has not started: never a unique-violation race.
    stored = await _stored_by_id(conn, tenant, session_id, [m.message_id for m in incoming])
    allocation = allocate(
        locked["last_sequence"], [m.message_id for m in incoming], stored, new_id=new_id
    )
    created_at: datetime = locked["now"]  # now(): the time the rows get as create_time
    answers: dict[str, asyncpg.Record | Appended] = dict(stored)
    results: list[asyncpg.Record | Appended] = []
    new_rows: list[tuple[Appended, NewMessage]] = []
    for index, (slot, item) in enumerate(zip(allocation.slots, incoming, strict=True)):
        if slot.sequence is None:
            results.append(answers[slot.message_id])
            continue
        appended = Appended(index, slot.message_id, slot.sequence, created_at)
        answers[slot.message_id] = appended
        new_rows.append((appended, item))
        results.append(appended)
    if new_rows:
        await _insert(conn, tenant, session_id, new_rows)
        await conn.execute(
            "UPDATE memory.sessions SET last_sequence = $3,"
            " message_count = message_count + $4, update_time = now()"
            " WHERE tenant = $1 AND id = $2",
            tenant,
            session_id,
            allocation.last_sequence,
            allocation.added,
        )
    return results


async def list_messages(
    conn: asyncpg.Connection,
    tenant: str,
    session_id: str,
    *,
    after_sequence: int,
    start: datetime | None,
    end: datetime | None,
    descending: bool,
    after: int | None,
    limit: int,
    budget: int,
) -> list[asyncpg.Record]:
    """A page of a session's messages (``COLUMNS``) in sequence order (``descending``
    or not): those after ``after_sequence`` created in [``start``, ``end``), following
    the last sequence ``after`` of the previous page; at most ``limit``, cut at
    ``budget`` bytes (:func:`agentmesh.core.sql.byte_budgeted`)."""
    where = Where(tenant)
    where.add("session_id = {}", session_id)
    if after_sequence:
        where.add("sequence > {}", after_sequence)
    if start is not None:
        where.add("create_time >= {}", start)
    if end is not None:
        where.add("create_time < {}", end)
    if after is not None:
        where.add("sequence < {}" if descending else "sequence > {}", after)
    order = "DESC" if descending else "ASC"
    inner = (
        f"SELECT {COLUMNS}, {_ITEM_BYTES} AS {PAGE_ITEM_BYTES}"
        f" FROM memory.messages WHERE {where.sql}"
        f" ORDER BY sequence {order} LIMIT {where.param(limit)}"
    )
    sql = byte_budgeted(inner, order=f"sequence {order}", budget=budget)
    rows: list[asyncpg.Record] = await conn.fetch(sql, *where.args)
    return rows
