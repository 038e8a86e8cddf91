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
    await _claim_session(conn, tenant, session_id, turn.turn_id, turn.resumes, claim_s)
    await _insert_turn(conn, tenant, session_id, turn, TurnState.RUNNING)


async def enqueue_turn(
    conn: asyncpg.Connection, tenant: str, session_id: str, turn: NewTurn, *, claim_s: float
) -> None:
    """Stores ``turn`` QUEUED, last in the session's queue, keeping its place for
    ``claim_s``. Call it under :func:`lock_conversation`."""
    await _insert_turn(conn, tenant, session_id, turn, TurnState.QUEUED)
    await conn.execute(
        """
        UPDATE conductor.turns
        SET queue_position = (SELECT coalesce(max(queue_position), 0) + 1 FROM conductor.turns
                              WHERE tenant = $1 AND session = $2),
            queue_expire_time = now() + make_interval(secs => $4)
        WHERE tenant = $1 AND session = $2 AND id = $3
        """,
        tenant,
        session_id,
        turn.turn_id,
        float(claim_s),
    )


async def queue_of(
    conn: asyncpg.Connection, tenant: str, session_id: str
) -> tuple[int, str | None]:
    """The session's live queued turns (their places' claims not lapsed): how many, and
    the first one's id (None: none)."""
    row = await conn.fetchrow(
        """
        SELECT count(*) AS queued,
               (array_agg(id ORDER BY queue_position))[1] AS head
        FROM conductor.turns
        WHERE tenant = $1 AND session = $2 AND state = $3 AND queue_expire_time > now()
        """,
        tenant,
        session_id,
        int(TurnState.QUEUED),
    )
    return int(row["queued"]), row["head"]


async def lapsed_queued(conn: asyncpg.Connection, tenant: str, session_id: str) -> list[str]:
    """The session's queued turns whose places lapsed (their replica stopped keeping
    them), oldest first. Call it under :func:`lock_conversation`."""
    rows = await conn.fetch(
        "SELECT id FROM conductor.turns WHERE tenant = $1 AND session = $2 AND state = $3"
        " AND queue_expire_time <= now() ORDER BY queue_position",
        tenant,
        session_id,
        int(TurnState.QUEUED),
    )
    return [row["id"] for row in rows]


async def keep_queued(
    conn: asyncpg.Connection, tenant: str, session_id: str, turn_id: str, *, claim_s: float
) -> TurnState | None:
    """Keeps the queued turn's place for ``claim_s`` more; returns the turn's state
    (None: no such turn)."""
    state = await conn.fetchval(
        """
        UPDATE conductor.turns
        SET queue_expire_time = CASE WHEN state = $4
                                     THEN now() + make_interval(secs => $5)
                                     ELSE queue_expire_time END
        WHERE tenant = $1 AND session = $2 AND id = $3
        RETURNING state
        """,
        tenant,
        session_id,
        turn_id,
        int(TurnState.QUEUED),
        float(claim_s),
    )
    return None if state is None else TurnState(state)


async def start_queued(
    conn: asyncpg.Connection, tenant: str, session_id: str, turn_id: str, *, claim_s: float
) -> None:
    """Makes queued turn ``turn_id`` RUNNING with the session's claim for ``claim_s``.
    Call it under :func:`lock_conversation`."""
    await _claim_session(conn, tenant, session_id, turn_id, None, claim_s)
    await conn.execute(
        "UPDATE conductor.turns SET state = $4, queue_expire_time = NULL"
        " WHERE tenant = $1 AND session = $2 AND id = $3",
        tenant,
        session_id,
        turn_id,
        int(TurnState.RUNNING),
    )


async def close_turn(
    db: asyncpg.Pool | asyncpg.Connection,
    tenant: str,
    session_id: str,
    turn_id: str,
    state: TurnState,
    *,
    was: TurnState,
) -> bool:
    """Marks turn ``turn_id`` ended in ``state`` if it is still ``was`` (a running turn
    stopped by a newer one, a queued turn that may not run); whether it was. The
    session's claim is the caller's to move."""
    closed = await db.fetchval(
        "UPDATE conductor.turns SET state = $4, end_time = now(), queue_expire_time = NULL"
        " WHERE tenant = $1 AND session = $2 AND id = $3 AND state = $5 RETURNING id",
        tenant,
        session_id,
        turn_id,
        int(state),
        int(was),
    )
    return closed is not None


async def turn_state(
    db: asyncpg.Pool | asyncpg.Connection, tenant: str, session_id: str, turn_id: str
) -> TurnState | None:
    """The state of the tenant's session's turn ``turn_id`` (None: no such turn)."""
    state = await db.fetchval(
        "SELECT state FROM conductor.turns WHERE tenant = $1 AND session = $2 AND id = $3",
        tenant,
        session_id,
        turn_id,
    )
    return None if state is None else TurnState(state)


async def _claim_session(
    conn: asyncpg.Connection,
    tenant: str,
    session_id: str,
    turn_id: str,
    resumes: str | None,
    claim_s: float,
) -> None:
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
        turn_id,
        float(claim_s),
        resumes,
    )


async def _insert_turn(
    conn: asyncpg.Connection, tenant: str, session_id: str, turn: NewTurn, state: TurnState
) -> None:
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
        int(state),
    )


async def append_event(
    db: asyncpg.Pool | asyncpg.Connection,
    tenant: str,
    session_id: str,
    turn_id: str,
    event: bytes,
) -> asyncpg.Record | None:
    """Stores one event of the turn with the session's next sequence; returns its
    ``sequence`` and ``time``, or None when the turn no longer runs or waits (a newer
    turn stopped it): its events end there."""
    row: asyncpg.Record | None = await db.fetchrow(
        """
        WITH numbered AS (
            UPDATE conductor.conversations SET last_sequence = last_sequence + 1
            WHERE tenant = $1 AND session = $2
              AND EXISTS (SELECT 1 FROM conductor.turns
                          WHERE tenant = $1 AND session = $2 AND id = $3
                            AND state IN ($5, $6))
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
        int(TurnState.RUNNING),
        int(TurnState.QUEUED),
    )
    return row


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
