"""SQL of ``conductor.conversations``, ``conductor.turns`` and ``conductor.events``:
every function takes the connection (or pool), then the tenant.

A turn starts inside one transaction that locks its session's conversation row, so
two turns of a session never start at once; each event is one statement that takes
the session's next sequence and stores the event; a turn ends with one statement that
marks it and releases (or pauses) its session, guarded by its claim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import asyncpg  # type: ignore[import-untyped]

from agentmesh.conductor.domain.turns import TurnState
from agentmesh.core.sql import Where

CONVERSATION_COLUMNS: Final = (
    "running_turn, running_expire_time, paused_turn, paused_interrupt_id, paused_agent,"
    " paused_thread_id, last_sequence"
)


@dataclass(frozen=True)
class NewTurn:
    """A turn about to start, validated."""

    turn_id: str
    request_id: str | None
    fingerprint: bytes
    agent_id: str
    thread_id: str
    resumes: str | None
    """The paused turn this one continues (a resume), else None."""


@dataclass(frozen=True)
class Paused:
    """What a turn that ended on an interrupt leaves for the resume."""

    interrupt_id: str
    agent_id: str
    thread_id: str


async def lock_conversation(
    conn: asyncpg.Connection, tenant: str, session_id: str
) -> asyncpg.Record:
    """The tenant's session's conversation (created empty if it had none), locked until
    the caller's transaction ends; with ``now``, the database's time."""
    await conn.execute(
        "INSERT INTO conductor.conversations (tenant, session) VALUES ($1, $2)"
        " ON CONFLICT (tenant, session) DO NOTHING",
        tenant,
        session_id,
    )
    return await conn.fetchrow(
        f"SELECT {CONVERSATION_COLUMNS}, now() AS now FROM conductor.conversations"
        " WHERE tenant = $1 AND session = $2 FOR UPDATE",
        tenant,
        session_id,
    )


async def find_turn(
    db: asyncpg.Pool | asyncpg.Connection, tenant: str, session_id: str, request_id: str
) -> asyncpg.Record | None:
    """The tenant's session's turn started with ``request_id``, or None."""
    return await db.fetchrow(
        "SELECT id, fingerprint, state FROM conductor.turns"
        " WHERE tenant = $1 AND session = $2 AND request_id = $3",
        tenant,
        session_id,
        request_id,
    )


async def start_turn(
    conn: asyncpg.Connection, tenant: str, session_id: str, turn: NewTurn, *, claim_s: float
) -> None:
    """Stores ``turn`` RUNNING and gives it the session's claim for ``claim_s`` (a resume
    also takes the session's pause away). Call it under :func:`lock_conversation`."""
    await conn.execute(
        """
        UPDATE conductor.conversations
        SET running_turn = $3, running_expire_time = now() + make_interval(secs => $4),
            paused_turn = CASE WHEN $5::text IS NULL THEN paused_turn END,
            paused_interrupt_id = CASE WHEN $5::text IS NULL THEN paused_interrupt_id END,
            paused_agent = CASE WHEN $5::text IS NULL THEN paused_agent END,
            paused_thread_id = CASE WHEN $5::text IS NULL THEN paused_thread_id END,
            update_time = now()
        WHERE tenant = $1 AND session = $2
        """,
        tenant,
        session_id,
        turn.turn_id,
        float(claim_s),
        turn.resumes,
    )
    await conn.execute(
        "INSERT INTO conductor.turns (tenant, session, id, request_id, fingerprint, agent,"
        " thread_id, resumes, state) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        tenant,
        session_id,
        turn.turn_id,
        turn.request_id,
        turn.fingerprint,
        turn.agent_id,
        turn.thread_id,
        turn.resumes,
        int(TurnState.RUNNING),
    )


async def append_event(
    db: asyncpg.Pool | asyncpg.Connection,
    tenant: str,
    session_id: str,
    turn_id: str,
    event: bytes,
) -> asyncpg.Record:
    """Stores one event of the turn with the session's next sequence; returns its
    ``sequence`` and ``time``."""
    return await db.fetchrow(
        """
        WITH numbered AS (
            UPDATE conductor.conversations SET last_sequence = last_sequence + 1
            WHERE tenant = $1 AND session = $2
            RETURNING last_sequence
        )
        INSERT INTO conductor.events (tenant, session, sequence, turn_id, event)
        SELECT $1, $2, last_sequence, $3, $4 FROM numbered
        RETURNING sequence, time
        """,
        tenant,
        session_id,
        turn_id,
        event,
    )


async def end_turn(
    db: asyncpg.Pool | asyncpg.Connection,
    tenant: str,
    session_id: str,
    turn_id: str,
    state: TurnState,
    paused: Paused | None = None,
) -> None:
    """Marks the running turn ``state`` and releases its session, leaving it paused on
    ``paused`` when given; a turn whose claim was taken over changes nothing."""
    await db.execute(
        """
        WITH ended AS (
            UPDATE conductor.turns SET state = $4, end_time = now()
            WHERE tenant = $1 AND session = $2 AND id = $3 AND state = $9
            RETURNING id
        )
        UPDATE conductor.conversations
        SET running_turn = NULL, running_expire_time = NULL, paused_turn = $5,
            paused_interrupt_id = $6, paused_agent = $7, paused_thread_id = $8,
            update_time = now()
        WHERE tenant = $1 AND session = $2 AND running_turn = $3
        """,
        tenant,
        session_id,
        turn_id,
        int(state),
        turn_id if paused else None,
        paused.interrupt_id if paused else None,
        paused.agent_id if paused else None,
        paused.thread_id if paused else None,
        int(TurnState.RUNNING),
    )


async def list_events(
    db: asyncpg.Pool | asyncpg.Connection,
    tenant: str,
    session_id: str,
    *,
    after: int,
    limit: int,
    turn_id: str | None = None,
) -> list[asyncpg.Record]:
    """The tenant's session's events after sequence ``after`` (only turn ``turn_id``'s
    when given), oldest first, at most ``limit``."""
    where = Where(tenant)
    where.add("session = {}", session_id)
    where.add("sequence > {}", after)
    if turn_id is not None:
        where.add("turn_id = {}", turn_id)
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT sequence, turn_id, time, event FROM conductor.events"
        f" WHERE {where.sql} ORDER BY sequence LIMIT {where.param(limit)}",
        *where.args,
    )
    return rows


async def last_sequence(db: asyncpg.Pool | asyncpg.Connection, tenant: str, session_id: str) -> int:
    """The sequence of the tenant's session's latest event (0: none yet)."""
    value = await db.fetchval(
        "SELECT last_sequence FROM conductor.conversations WHERE tenant = $1 AND session = $2",
        tenant,
        session_id,
    )
    return int(value or 0)
