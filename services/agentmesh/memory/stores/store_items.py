"""Storage of the LangGraph store's items (``memory.store_items``): JSON documents under
a namespace path, with an optional embedding and TTL. Every function takes the tenant
first (but the janitor's purge, which serves every tenant).

An item past its ``expire_time`` is gone for every read; writes of the tenant sweep
such items, and the janitor catches tenants that stopped writing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Final

import asyncpg  # type: ignore[import-untyped]

from agentmesh.core.sql import (
    PAGE_ITEM_BYTES,
    ROW_OVERHEAD_BYTES,
    Where,
    byte_budgeted,
    delete_batch,
)
from agentmesh.memory.domain.store_items import WILDCARD, Compare, FilterTerm

EMBEDDING_DIM: Final = 384
"""Width of ``memory.store_items.embedding`` (the migration's ``vector(384)``)."""

_LIVE: Final = "(expire_time IS NULL OR expire_time > now())"
_ITEM_COLUMNS: Final = "namespace, key, value::text AS value, create_time, update_time"
_ITEM_BYTES: Final = (
    f"octet_length(value::text) + octet_length(namespace::text) + octet_length(key)"
    f" + {ROW_OVERHEAD_BYTES}"
)
"""An item's size estimate in a search response."""
"""The columns of an item row as every read returns them (value as JSON text)."""
_ORDERING: Final = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


async def put_item(
    conn: asyncpg.Connection,
    tenant: str,
    namespace: Sequence[str],
    key: str,
    value_json: str,
    embedding: list[float] | None,
    ttl: timedelta | None,
) -> asyncpg.Record:
    """Creates or replaces an item (its create time stays); returns its row. Sweeps the
    tenant's expired items first: run it in a transaction."""
    await conn.execute(
        "DELETE FROM memory.store_items WHERE tenant = $1 AND expire_time <= now()", tenant
    )
    row: asyncpg.Record = await conn.fetchrow(
        f"""
        INSERT INTO memory.store_items AS s
            (tenant, namespace, key, value, embedding, ttl, expire_time)
        VALUES ($1, $2, $3, $4::jsonb, $5, $6, now() + $6)
        ON CONFLICT (tenant, namespace, key) DO UPDATE
        SET value = EXCLUDED.value, embedding = EXCLUDED.embedding,
            ttl = EXCLUDED.ttl, expire_time = EXCLUDED.expire_time,
            update_time = now()
        RETURNING {_ITEM_COLUMNS}
        """,
        tenant,
        list(namespace),
        key,
        value_json,
        embedding,
        ttl,
    )
    return row


async def get_item(
    db: asyncpg.Pool | asyncpg.Connection,
    tenant: str,
    namespace: Sequence[str],
    key: str,
    *,
    refresh_ttl: bool,
) -> asyncpg.Record | None:
    """A live item's row, None when there is none; ``refresh_ttl`` starts the TTL of an
    item that has one over."""
    row: asyncpg.Record | None = await db.fetchrow(
        f"""
        WITH refreshed AS (
            UPDATE memory.store_items SET expire_time = now() + ttl
            WHERE $4 AND tenant = $1 AND namespace = $2 AND key = $3
              AND ttl IS NOT NULL AND expire_time > now()
        )
        SELECT {_ITEM_COLUMNS} FROM memory.store_items
        WHERE tenant = $1 AND namespace = $2 AND key = $3 AND {_LIVE}
        """,
        tenant,
        list(namespace),
        key,
        refresh_ttl,
    )
    return row


async def delete_item(
    db: asyncpg.Pool | asyncpg.Connection, tenant: str, namespace: Sequence[str], key: str
) -> None:
    """Deletes an item; deleting one that does not exist is fine."""
    await db.execute(
        "DELETE FROM memory.store_items WHERE tenant = $1 AND namespace = $2 AND key = $3",
        tenant,
        list(namespace),
        key,
    )


def add_filter(where: Where, terms: Sequence[FilterTerm]) -> None:
    """Adds a search filter's conditions on the item's ``value`` to ``where``, as
    LangGraph's stores match them: containment is jsonb ``@>``; ``$eq``/``$ne`` compare
    the field's JSON value (a missing field is distinct from every value), ordering
    operators only between values of the same JSON type."""
    for term in terms:
        if not isinstance(term, Compare):
            where.add("value @> {}::jsonb", json.dumps({term.field: term.value}))
            continue
        column = f"(value -> {where.param(term.field)})"
        operand = f"{where.param(json.dumps(term.operand))}::jsonb"
        if term.operator == "$ne":
            where.add(f"{column} IS DISTINCT FROM {operand}")
        elif term.operator == "$eq":
            where.add(f"{column} = {operand}")
        else:
            where.add(f"jsonb_typeof({column}) = jsonb_typeof({operand})")
            where.add(f"{column} {_ORDERING[term.operator]} {operand}")


def add_namespace_match(where: Where, labels: Sequence[str], *, suffix: bool) -> None:
    """Adds to ``where``: the namespace starts (or ends) with ``labels``, ``*`` matching
    any one label."""
    if not labels:
        return
    where.add(f"cardinality(namespace) >= {len(labels)}")
    for i, label in enumerate(labels):
        if label == WILDCARD:
            continue
        position = f"cardinality(namespace) - {len(labels) - 1 - i}" if suffix else str(i + 1)
        where.add(f"namespace[{position}] = {{}}", label)


async def search_items(
    db: asyncpg.Pool | asyncpg.Connection,
    tenant: str,
    *,
    namespace_prefix: Sequence[str],
    terms: Sequence[FilterTerm],
    query_vector: list[float] | None,
    limit: int,
    offset: int,
    budget: int,
) -> list[asyncpg.Record]:
    """Live items under ``namespace_prefix`` that match the filter ``terms``; each row
    has a ``score``. With ``query_vector``: only embedded items, most similar first
    (score: cosine similarity); without: most recently updated first (score NULL). At
    most ``limit``, cut at ``budget`` bytes (:func:`agentmesh.core.sql.byte_budgeted`:
    a row past the page says the budget stopped it)."""
    where = Where(tenant)
    where.add(_LIVE)
    if namespace_prefix:
        where.add(f"namespace[1:{len(namespace_prefix)}] = {{}}::text[]", list(namespace_prefix))
    add_filter(where, terms)
    if query_vector is not None:
        where.add("embedding IS NOT NULL")
        distance = f"embedding <=> {where.param(query_vector)}"
        select = f"SELECT {_ITEM_COLUMNS}, 1 - ({distance}) AS score"
        order = "score DESC, namespace, key"
    else:
        select = f"SELECT {_ITEM_COLUMNS}, NULL::float8 AS score"
        order = "update_time DESC, namespace, key"
    inner = (
        f"{select}, {_ITEM_BYTES} AS {PAGE_ITEM_BYTES} FROM memory.store_items"
        f" WHERE {where.sql} ORDER BY {order} LIMIT {int(limit)} OFFSET {int(offset)}"
    )
    rows: list[asyncpg.Record] = await db.fetch(
        byte_budgeted(inner, order=order, budget=budget), *where.args
    )
    return rows


async def list_namespaces(
    db: asyncpg.Pool | asyncpg.Connection,
    tenant: str,
    *,
    prefix: Sequence[str],
    suffix: Sequence[str],
    max_depth: int,
    limit: int,
    offset: int,
) -> list[list[str]]:
    """The distinct namespaces of live items that start with ``prefix`` and end with
    ``suffix`` (``*`` matching any one label), cut to ``max_depth`` labels (0: whole),
    in order."""
    where = Where(tenant)
    where.add(_LIVE)
    add_namespace_match(where, prefix, suffix=False)
    add_namespace_match(where, suffix, suffix=True)
    path = f"namespace[1:{int(max_depth)}]" if max_depth else "namespace"
    rows = await db.fetch(
        f"SELECT DISTINCT {path} AS path FROM memory.store_items WHERE {where.sql}"
        f" ORDER BY path LIMIT {int(limit)} OFFSET {int(offset)}",
        *where.args,
    )
    return [row["path"] for row in rows]


async def purge_expired_store_items(db: asyncpg.Pool | asyncpg.Connection, limit: int) -> int:
    """Deletes up to ``limit`` expired items of any tenant, as the sweep of
    :func:`put_item` sees them, in one statement; returns how many were deleted. The
    janitor calls it in batches. The expiry is checked again on the row, so an item
    whose TTL a read refreshed meanwhile stays."""
    return await delete_batch(db, "memory.store_items", "expire_time <= now()", limit)
