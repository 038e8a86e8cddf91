"""SQL building shared by every store: WHERE clauses scoped by tenant by construction.

Every store function takes the tenant first, and every list or search query builds its
conditions with :class:`Where`, which starts with ``tenant = $1``: a store cannot forget
the tenant, and values only ever reach SQL as numbered parameters. Column names and
operators in the templates come from the code (allow-listed filter fields), never from
a client.
"""

from __future__ import annotations

from typing import Any, Final

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


PAGE_ITEM_BYTES: Final = "page_item_bytes"
"""The column a :func:`byte_budgeted` query's inner select names each row's size with."""
ROW_OVERHEAD_BYTES: Final = 256
"""Added to each row's stored sizes in a size estimate: its names, ids and times."""


def item_bytes(row: asyncpg.Record) -> int:
    """A :func:`byte_budgeted` row's estimated size (``page_item_bytes``)."""
    return int(row[PAGE_ITEM_BYTES])


def byte_budgeted(inner: str, *, order: str, budget: int) -> str:
    """Wraps a page query so PostgreSQL sends only the rows that fit ``budget`` bytes.

    ``inner`` is the whole page query (``... ORDER BY ... LIMIT n``) and selects each
    row's estimated response size as ``page_item_bytes``; ``order`` is the same order
    in terms of the inner query's output columns. The result is the leading rows whose
    sizes add up to at most ``budget`` (always the first one, however large), plus the
    first row that did not fit, if any (the second row when the first alone was over
    the budget): it tells :func:`agentmesh.core.paging.fit_page`
    the page was cut there. Rows the budget excludes never leave the server, and their
    large values are never read (TOAST values are fetched only for rows sent). The
    inner query keeps its own plan (index order, LIMIT); the window runs over its at
    most ``n`` rows.
    """
    return (
        "SELECT * FROM (SELECT page.*,"
        f" sum(page.{PAGE_ITEM_BYTES}) OVER w - page.{PAGE_ITEM_BYTES} AS page_bytes_before,"
        " row_number() OVER w AS page_row"
        f" FROM ({inner}) AS page"
        f" WINDOW w AS (ORDER BY {order} ROWS UNBOUNDED PRECEDING)) AS fitted"
        f" WHERE page_bytes_before <= {int(budget)} OR page_row = 2 ORDER BY page_row"
    )
