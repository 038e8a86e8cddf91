"""Idempotent writes keyed by the client's ``request_id``.

Inside the write's own transaction, ``claim`` inserts the key first. PostgreSQL
makes a concurrent transaction with the same key wait on the unique index until
the first commits (then it sees the stored response and replays it) or rolls back
(then it does the work itself). So a retried create never runs twice, and a
failed create leaves no key behind.
"""

from __future__ import annotations

from typing import TypeVar

import asyncpg  # type: ignore[import-untyped]
from google.protobuf.message import Message

from agentmesh.core.errors import InvalidArgument

M = TypeVar("M", bound=Message)

_MAX_REQUEST_ID = 128


def validate_request_id(request_id: str, *, field: str = "request_id") -> str:
    """Request ids are opaque but bounded; a UUID is typical."""
    if len(request_id) > _MAX_REQUEST_ID or not request_id.isprintable():
        raise InvalidArgument(field, f"at most {_MAX_REQUEST_ID} printable characters")
    return request_id


async def claim(
    conn: asyncpg.Connection,
    tenant: str,
    method: str,
    request_id: str,
    response_type: type[M],
    *,
    ttl_s: int,
) -> M | None:
    """Claims ``request_id`` for this transaction, or returns the response stored by
    the transaction that claimed it before (a replay). Empty ids claim nothing."""
    if not request_id:
        return None
    validate_request_id(request_id)
    inserted = await conn.fetchval(
        """
        INSERT INTO memory.request_ids (tenant, method, request_id, expire_time)
        VALUES ($1, $2, $3, now() + make_interval(secs => $4))
        ON CONFLICT (tenant, method, request_id) DO UPDATE
            SET claim = EXCLUDED.claim, response = NULL, expire_time = EXCLUDED.expire_time
            WHERE memory.request_ids.expire_time < now()
        RETURNING claim
        """,
        tenant,
        method,
        request_id,
        float(ttl_s),
    )
    if inserted is not None:
        return None
    stored = await conn.fetchval(
        "SELECT response FROM memory.request_ids"
        " WHERE tenant = $1 AND method = $2 AND request_id = $3",
        tenant,
        method,
        request_id,
    )
    return response_type.FromString(stored) if stored is not None else None


async def remember(
    conn: asyncpg.Connection, tenant: str, method: str, request_id: str, response: Message
) -> None:
    """Stores the response of a claimed request, in the same transaction as the write."""
    if not request_id:
        return
    await conn.execute(
        "UPDATE memory.request_ids SET response = $4"
        " WHERE tenant = $1 AND method = $2 AND request_id = $3",
        tenant,
        method,
        request_id,
        response.SerializeToString(),
    )
