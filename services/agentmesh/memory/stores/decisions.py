"""Storage of the decision audit trail (``memory.decisions``): insert, get, list.

Append-only: nothing here updates or deletes a decision. Every function takes the
tenant first; list conditions are built with ``core.sql.Where``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import asyncpg  # type: ignore[import-untyped]

from agentmesh.core.sql import PAGE_ITEM_BYTES, ROW_OVERHEAD_BYTES, Where, byte_budgeted

_ITEM_BYTES: Final = (
    "octet_length(input_summary) + octet_length(reasoning) + octet_length(candidates::text)"
    " + octet_length(chosen_action) + octet_length(tools::text) + octet_length(outcome)"
    f" + octet_length(metadata::text) + {ROW_OVERHEAD_BYTES}"
)
"""A decision's size estimate in a page."""
COLUMNS: Final = """
    id, agent, session_id, job_id, input_summary, reasoning, candidates, chosen_action,
    tools, outcome, latency_ns, input_tokens, output_tokens, total_tokens, trace_id,
    metadata, create_time
"""
"""The columns every read returns, the decision converter's input."""

_COMPARISONS: Final = frozenset({"<", "<=", ">", ">=", "="})


@dataclass(frozen=True, slots=True)
class NewDecision:
    """The validated column values of a decision to append."""

    agent: str
    session_id: str | None
    job_id: str | None
    input_summary: str
    reasoning: str
    candidates: str
    """JSON array text (``jsonb``)."""
    chosen_action: str
    tools: Sequence[str]
    outcome: str
    latency_ns: int | None
    input_tokens: int | None
    output_tokens: int | None
    total_tokens: int | None
    trace_id: str
    metadata: str
    """JSON object text (``jsonb``)."""


@dataclass(frozen=True, slots=True)
class DecisionFilter:
    """What a list keeps: every condition must hold (several of one kind too)."""

    agents: Sequence[str] = ()
    session_ids: Sequence[str] = ()
    job_ids: Sequence[str] = ()
    create_time: Sequence[tuple[str, datetime]] = ()
    """``(operator, bound)`` pairs; operators among ``<  <=  >  >=  =``."""


async def insert_decision(
    conn: asyncpg.Connection, tenant: str, decision_id: str, new: NewDecision
) -> asyncpg.Record:
    """Appends a decision; returns its row (``COLUMNS``)."""
    return await conn.fetchrow(
        f"""
        INSERT INTO memory.decisions (
            tenant, id, agent, session_id, job_id, input_summary, reasoning, candidates,
            chosen_action, tools, outcome, latency_ns, input_tokens, output_tokens,
            total_tokens, trace_id, metadata
        )
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11, $12, $13, $14, $15, $16,
                $17::jsonb)
        RETURNING {COLUMNS}
        """,
        tenant,
        decision_id,
        new.agent,
        new.session_id,
        new.job_id,
        new.input_summary,
        new.reasoning,
        new.candidates,
        new.chosen_action,
        list(new.tools),
        new.outcome,
        new.latency_ns,
        new.input_tokens,
        new.output_tokens,
        new.total_tokens,
        new.trace_id,
        new.metadata,
    )


async def get_decision(pool: asyncpg.Pool, tenant: str, decision_id: str) -> asyncpg.Record | None:
    """The tenant's decision, or None."""
    return await pool.fetchrow(
        f"SELECT {COLUMNS} FROM memory.decisions WHERE tenant = $1 AND id = $2",
        tenant,
        decision_id,
    )


async def list_decisions(
    pool: asyncpg.Pool,
    tenant: str,
    where: DecisionFilter,
    *,
    before: tuple[datetime, str] | None,
    limit: int,
    budget: int,
) -> list[asyncpg.Record]:
    """The tenant's decisions matching ``where``, newest first (create time, then id),
    starting after ``before`` (the (create_time, id) of the previous page's last row);
    cut at ``budget`` bytes."""
    sql = Where(tenant)
    for agent in where.agents:
        sql.add("agent = {}", agent)
    for session_id in where.session_ids:
        sql.add("session_id = {}", session_id)
    for job_id in where.job_ids:
        sql.add("job_id = {}", job_id)
    for op, bound in where.create_time:
        if op not in _COMPARISONS:  # never the client's text: the filter rules' fixed set
            raise ValueError(f"not a comparison: {op!r}")
        sql.add(f"create_time {op} {{}}", bound)
    if before is not None:
        sql.add("(create_time, id) < ({}, {})", *before)
    inner = (
        f"SELECT {COLUMNS}, {_ITEM_BYTES} AS {PAGE_ITEM_BYTES} FROM memory.decisions"
        f" WHERE {sql.sql} ORDER BY create_time DESC, id DESC LIMIT {int(limit)}"
    )
    rows: list[asyncpg.Record] = await pool.fetch(
        byte_budgeted(inner, order="create_time DESC, id DESC", budget=budget), *sql.args
    )
    return rows
