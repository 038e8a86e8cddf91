"""SQL of ``job.jobs`` and ``job.events``: every function takes the tenant first.

Every visible change of a job is one statement that updates the row only if it is in
the state (and, for a worker, the attempt and fence) the change starts from, bumps its
``sequence``, writes the job as it now is to ``job.events`` and drops the events older
than the latest ``EVENTS_KEPT``: a change either happens whole or not at all, and two
changes racing on one job cannot both win.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]

from agentmesh.core.changes import Topic
from agentmesh.core.filtering import Term, timestamp_value
from agentmesh.core.names import AGENTS, SESSIONS
from agentmesh.core.sql import PAGE_ITEM_BYTES, ROW_OVERHEAD_BYTES, Where, byte_budgeted
from agentmesh.job.domain.states import ACTIVE, State

COLUMNS: Final = (
    "tenant, id, agent, input, parts, session, priority, labels, max_attempts,"
    " initial_backoff_ms, max_backoff_ms, backoff_multiplier, state, attempt, attempt_limit,"
    " fence, lease_owner, lease_expire_time, dispatch_time, cancel_reason, progress, result,"
    " error, interrupt, resume, thread_id, input_tokens, output_tokens, sequence,"
    " create_time, schedule_time, start_time, end_time, update_time, traceparent"
)
JOB_CHANGES: Final = Topic("agentmesh:job:changed:", "job")
"""Where a committed change of a job is announced (its new sequence), keyed by job id."""
EVENTS_KEPT: Final = 1000
"""Changes kept per job for WatchJob's replay (the contract says so)."""
_SNAPSHOT: Final = "to_jsonb(changed) - 'input' - 'parts' - 'resume' - 'traceparent'"
"""A change's record: the job without what never changes (input, parts) and the
answer waiting for the worker (large, and not part of the job's visible state)."""
_ACTIVE_SQL: Final = "(" + ", ".join(str(int(s)) for s in sorted(ACTIVE)) + ")"
_ITEM_BYTES: Final = (
    "octet_length(input::text) + octet_length(parts::text) + octet_length(labels::text)"
    " + coalesce(octet_length(result::text), 0) + coalesce(octet_length(error::text), 0)"
    " + coalesce(octet_length(interrupt::text), 0) + coalesce(octet_length(progress::text), 0)"
    f" + {ROW_OVERHEAD_BYTES}"
)
ORDERS: Final = {
    "create_time desc": ("create_time", True),
    "create_time": ("create_time", False),
    "update_time desc": ("update_time", True),
    "update_time": ("update_time", False),
}
"""ListJobs' orders: the time column and whether newest first."""


def _logged(update_sql: str) -> str:
    """``update_sql`` (an INSERT or UPDATE of one job ``RETURNING *``) with its change
    written to ``job.events`` and old events dropped, in one statement."""
    return f"""
        WITH changed AS ({update_sql} RETURNING *),
        logged AS (
            INSERT INTO job.events (tenant, job_id, sequence, time, snapshot)
            SELECT tenant, id, sequence, update_time, {_SNAPSHOT} FROM changed
        ),
        pruned AS (
            DELETE FROM job.events AS e USING changed AS c
            WHERE e.tenant = c.tenant AND e.job_id = c.id
              AND e.sequence <= c.sequence - {EVENTS_KEPT}
        )
        SELECT {COLUMNS} FROM changed
    """


@dataclass(frozen=True)
class NewJob:
    """What CreateJob stores: validated, defaults filled in."""

    job_id: str
    agent_id: str
    input_json: str
    parts_json: str
    session: str
    priority: int
    labels_json: str
    max_attempts: int
    initial_backoff_ms: int
    max_backoff_ms: int
    backoff_multiplier: float
    thread_id: str
    start_delay_s: float
    traceparent: str = ""


async def insert_job(conn: asyncpg.Connection, tenant: str, job: NewJob) -> asyncpg.Record | None:
    """Creates the job PENDING at attempt 1, due after its start delay (its first
    change, sequence 1, is logged); None when the tenant's id is taken. A job due now
    is marked dispatched: the caller sends its message right after the commit."""
    insert = """
        INSERT INTO job.jobs (tenant, id, agent, input, parts, session, priority, labels,
            max_attempts, initial_backoff_ms, max_backoff_ms, backoff_multiplier, state,
            attempt, attempt_limit, thread_id, schedule_time, dispatch_time, traceparent)
        VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6, $7, $8::jsonb, $9, $10, $11, $12, $13,
            1, $16, $14, now() + make_interval(secs => $15),
            CASE WHEN $15 = 0 THEN now() END, $17)
        ON CONFLICT (tenant, id) DO NOTHING
    """
    return await conn.fetchrow(
        _logged(insert),
        tenant,
        job.job_id,
        job.agent_id,
        job.input_json,
        job.parts_json,
        job.session,
        job.priority,
        job.labels_json,
        job.max_attempts,
        job.initial_backoff_ms,
        job.max_backoff_ms,
        job.backoff_multiplier,
        int(State.PENDING),
        job.thread_id,
        float(job.start_delay_s),
        job.max_attempts,
        job.traceparent,
    )


async def get_job(
    db: asyncpg.Pool | asyncpg.Connection, tenant: str, job_id: str
) -> asyncpg.Record | None:
    """The tenant's job, or None."""
    return await db.fetchrow(
        f"SELECT {COLUMNS} FROM job.jobs WHERE tenant = $1 AND id = $2", tenant, job_id
    )


async def count_active(conn: asyncpg.Connection, tenant: str, *, up_to: int) -> int:
    """How many of the tenant's jobs have not ended, counted up to ``up_to``."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM (SELECT 1 FROM job.jobs"
        f" WHERE tenant = $1 AND state IN {_ACTIVE_SQL} LIMIT $2) AS active",
        tenant,
        up_to,
    )
    return count


async def change_job(
    db: asyncpg.Pool | asyncpg.Connection,
    tenant: str,
    job_id: str,
    *,
    states: Iterable[State],
    sets: Sequence[tuple[str, Sequence[Any]]],
    when: Sequence[tuple[str, Sequence[Any]]] = (),
) -> asyncpg.Record | None:
    """Applies one change to the tenant's job if it is in one of ``states`` and meets
    ``when``; returns the job as it now is, or None when it does not match (missing,
    or changed meanwhile). ``sets`` and ``when`` are SQL templates from the code whose
    ``{}`` become parameters bound to their values; ``state`` is not implied."""
    where = Where(tenant)
    where.add("id = {}", job_id)
    where.add("state = ANY({}::smallint[])", [int(s) for s in states])
    for template, values in when:
        where.add(template, *values)
    assignments = [template.format(*(where.param(v) for v in values)) for template, values in sets]
    assignments += ["sequence = sequence + 1", "update_time = now()"]
    update = f"UPDATE job.jobs SET {', '.join(assignments)} WHERE {where.sql}"
    return await db.fetchrow(_logged(update), *where.args)


async def mark_dispatched(
    db: asyncpg.Pool | asyncpg.Connection, tenant: str, job_id: str, attempt: int
) -> None:
    """Notes that a message for the job's attempt was sent (not a visible change)."""
    await db.execute(
        "UPDATE job.jobs SET dispatch_time = now() WHERE tenant = $1 AND id = $2 AND attempt = $3",
        tenant,
        job_id,
        attempt,
    )


def _filter_sql(where: Where, terms: Sequence[Term]) -> None:
    """Adds ListJobs' parsed filter terms; field names and operators come from its
    allow-list of filter fields, never from raw input."""
    for term in terms:
        if term.field.startswith("labels."):
            where.add("labels @> {}::jsonb", json.dumps({term.key: term.value}))
        elif term.field == "state":
            where.add("state = {}", int(State[term.value]))
        elif term.field == "agent":
            where.add("agent = {}", AGENTS.parse(term.value, field="filter"))
        elif term.field == "session":
            where.add("session = {}", term.value and SESSIONS.format(SESSIONS.parse(term.value)))
        else:
            where.add(f"{term.field} {term.op} {{}}", timestamp_value(term.value))


async def list_jobs(
    db: asyncpg.Pool | asyncpg.Connection,
    tenant: str,
    *,
    terms: Sequence[Term],
    order: str,
    after: tuple[datetime, str] | None,
    limit: int,
    budget: int,
) -> list[asyncpg.Record]:
    """The tenant's jobs matching ``terms`` in ``order`` (a key of ``ORDERS``; ties by
    id), after the position ``after`` (time, id) of the previous page; at most
    ``limit``, cut at ``budget`` bytes."""
    column, newest_first = ORDERS[order]
    where = Where(tenant)
    _filter_sql(where, terms)
    # Each order is the time index read forwards or backwards, ties by id.
    direction, tie, beyond, tie_beyond = (
        ("DESC", "", "<", ">") if newest_first else ("", "DESC", ">", "<")
    )
    if after is not None:
        moment, last_id = after
        where.add(
            f"({column} {beyond} {{}} OR ({column} = {{}} AND id {tie_beyond} {{}}))",
            moment,
            moment,
            last_id,
        )
    sort = f"{column} {direction}, id {tie}"
    inner = (
        f"SELECT {COLUMNS}, {_ITEM_BYTES} AS {PAGE_ITEM_BYTES} FROM job.jobs"
        f" WHERE {where.sql} ORDER BY {sort} LIMIT {where.param(limit)}"
    )
    rows: list[asyncpg.Record] = await db.fetch(
        byte_budgeted(inner, order=sort, budget=budget), *where.args
    )
    return rows


async def list_events(
    db: asyncpg.Pool | asyncpg.Connection, tenant: str, job_id: str, *, after: int, limit: int
) -> list[asyncpg.Record]:
    """The tenant's job's kept changes after sequence ``after``, oldest first."""
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT sequence, time, snapshot FROM job.events"
        " WHERE tenant = $1 AND job_id = $2 AND sequence > $3 ORDER BY sequence LIMIT $4",
        tenant,
        job_id,
        after,
        limit,
    )
    return rows


# -- housekeeping: the sweeper's reads over every tenant --------------------------------


async def due_for_dispatch_all_tenants(
    db: asyncpg.Pool | asyncpg.Connection,
    *,
    redispatch_after_s: float,
    lease_s: float,
    limit: int,
) -> list[asyncpg.Record]:
    """Pending jobs (every tenant) that are due and have no recent message, marked
    dispatched now; plus resumed jobs no worker claimed within their lease, given a
    new claim window. The caller sends a message for each (tenant, id, attempt,
    priority). Not a visible change: the sequence stays."""
    rows: list[asyncpg.Record] = await db.fetch(
        """
        UPDATE job.jobs AS j
        SET dispatch_time = now(),
            lease_expire_time = CASE WHEN j.state = $3 THEN now() + make_interval(secs => $4)
                                END
        FROM (
            SELECT tenant, id FROM job.jobs
            WHERE state = $2 AND schedule_time <= now()
              AND (dispatch_time IS NULL
                   OR dispatch_time < now() - make_interval(secs => $1))
            UNION ALL
            SELECT tenant, id FROM job.jobs
            WHERE state = $3 AND lease_owner IS NULL AND lease_expire_time < now()
            LIMIT $5
        ) AS due
        WHERE j.tenant = due.tenant AND j.id = due.id
        RETURNING j.tenant, j.id, j.attempt, j.priority, j.traceparent
        """,
        redispatch_after_s,
        int(State.PENDING),
        int(State.RUNNING),
        lease_s,
        limit,
    )
    return rows


async def expired_leases_all_tenants(
    db: asyncpg.Pool | asyncpg.Connection, *, limit: int
) -> list[asyncpg.Record]:
    """Running or cancelling jobs (every tenant) whose worker's lease expired: the
    worker died or lost its way. Read only; each is then changed under its own
    guard."""
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT tenant, id, state, attempt, attempt_limit, fence, priority, traceparent"
        " FROM job.jobs"
        " WHERE state IN ($1, $2) AND lease_owner IS NOT NULL AND lease_expire_time < now()"
        " ORDER BY lease_expire_time LIMIT $3",
        int(State.RUNNING),
        int(State.CANCELLING),
        limit,
    )
    return rows


# -- a worker's writes: each carries the attempt and the fence it claimed with ----------


async def claim_job(
    db: asyncpg.Pool | asyncpg.Connection,
    tenant: str,
    job_id: str,
    *,
    attempt: int,
    owner: str,
    lease_s: float,
) -> asyncpg.Record | None:
    """Takes the tenant's job's ``attempt`` for worker ``owner``: a pending attempt that
    is due, or a resumed one no worker holds. RUNNING with a new fence and a lease of
    ``lease_s``; None when the attempt is not there to take (already taken, cancelled,
    superseded by a later attempt, not due): the message that asked is stale."""
    return await change_job(
        db,
        tenant,
        job_id,
        states=[State.PENDING, State.RUNNING],
        when=[
            ("attempt = {}", (attempt,)),
            (
                "((state = {} AND schedule_time <= now()) OR (state = {} AND lease_owner IS NULL))",
                (int(State.PENDING), int(State.RUNNING)),
            ),
        ],
        sets=[
            (
                "start_time = CASE WHEN state = {} THEN now() ELSE start_time END",
                (int(State.PENDING),),
            ),
            ("state = {}", (int(State.RUNNING),)),
            ("fence = fence + 1", ()),
            ("lease_owner = {}", (owner,)),
            ("lease_expire_time = now() + make_interval(secs => {})", (lease_s,)),
        ],
    )


async def renew_lease(
    db: asyncpg.Pool | asyncpg.Connection,
    tenant: str,
    job_id: str,
    *,
    fence: int,
    lease_s: float,
) -> State | None:
    """Extends the lease of the worker that claimed the tenant's job with ``fence``
    (not a visible change); the job's state (RUNNING, or CANCELLING when a client
    cancelled it), or None when the worker no longer holds it."""
    state = await db.fetchval(
        "UPDATE job.jobs SET lease_expire_time = now() + make_interval(secs => $4)"
        " WHERE tenant = $1 AND id = $2 AND fence = $3 AND state IN ($5, $6)"
        " RETURNING state",
        tenant,
        job_id,
        fence,
        lease_s,
        int(State.RUNNING),
        int(State.CANCELLING),
    )
    return None if state is None else State(state)


async def release_dispatch(
    db: asyncpg.Pool | asyncpg.Connection, tenant: str, job_id: str, attempt: int
) -> None:
    """Forgets that the pending attempt's message was sent, so the sweeper sends it
    again on its next pass (a worker that is stopping refused it)."""
    await db.execute(
        "UPDATE job.jobs SET dispatch_time = NULL"
        " WHERE tenant = $1 AND id = $2 AND attempt = $3 AND state = $4",
        tenant,
        job_id,
        attempt,
        int(State.PENDING),
    )
