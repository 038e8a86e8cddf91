"""SQL building shared by every store: WHERE clauses scoped by tenant by construction.

Every store function takes the tenant first, and every list or search query builds its
conditions with :class:`Where`, which starts with ``tenant = $1``: a store cannot forget
the tenant, and values only ever reach SQL as numbered parameters. Column names and
operators in the templates come from the code (allow-listed filter fields), never from
a client.
"""

from __future__ import annotations

from typing import Any

import asyncpg  # type: ignore[import-untyped]


class Where:
    """A WHERE clause with numbered parameters; its first condition is always the
    tenant (``$1``), so no query built with it can forget the tenant."""

    def __init__(self, tenant: str, *, column: str = "tenant") -> None:
        if not tenant:
            raise ValueError("a query needs the caller's tenant")
        self.args: list[Any] = [tenant]
        """The parameters, in order: ``$1`` is the tenant."""
        self.conditions: list[str] = [f"{column} = $1"]
        """The conditions, joined with AND."""

    def param(self, value: Any) -> str:
        """Adds a parameter and returns its placeholder (``$n``), for templates built
        piece by piece."""
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, template: str, *values: Any) -> None:
        """Adds the condition ``template``, whose ``{}`` placeholders become the next
        parameters, bound to ``values`` in order."""
        self.conditions.append(template.format(*(self.param(value) for value in values)))

    @property
    def sql(self) -> str:
        """The conditions joined with AND (no ``WHERE`` keyword)."""
        return " AND ".join(self.conditions)


async def delete_batch(
    db: asyncpg.Pool | asyncpg.Connection, table: str, condition: str, limit: int
) -> int:
    """Deletes at most ``limit`` rows of ``table`` (every tenant: housekeeping) that
    match ``condition``; returns how many. One statement: the rows are picked by
    ``ctid`` and the condition is checked again on each, so a row that stopped
    matching meanwhile (an expiry moved, a key claimed again) stays. ``table`` and
    ``condition`` are SQL from the code, never from a client; janitors call this in
    batches, each its own short transaction."""
    deleted = await db.fetchval(
        f"""
        WITH gone AS (
            DELETE FROM {table}
            WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE {condition} LIMIT $1))
              AND {condition}
            RETURNING 1
        )
        SELECT count(*) FROM gone
        """,
        limit,
    )
    return int(deleted)
