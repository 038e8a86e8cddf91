"""Idempotent writes keyed by the client's ``request_id`` (AIP-155).

Inside the write's own transaction, ``claim`` inserts the key first, together with
the fingerprint of the request that carries it. PostgreSQL makes a concurrent
transaction with the same key wait on the unique index until the first commits
(then it sees the stored response and fingerprint: a retry of the same request
replays the response, a different request reusing the key is refused) or rolls back
(then it does the work itself). So a retried create never runs twice, a reused key
never returns another request's result, and a failed create leaves no key behind.
"""

from __future__ import annotations

import hashlib
from typing import TypeVar

import asyncpg  # type: ignore[import-untyped]
from google.protobuf.message import Message

from agentmesh.core.errors import InvalidArgument

M = TypeVar("M", bound=Message)

_MAX_REQUEST_ID = 128
REUSED_FOR_ANOTHER_REQUEST = (
    "already used for a different request; a retry must repeat the original request"
    " exactly, a new request needs a new request_id"
)


def validate_request_id(request_id: str, *, field: str = "request_id") -> str:
    """Request ids are opaque but bounded; a UUID is typical."""
    if len(request_id) > _MAX_REQUEST_ID or not request_id.isprintable():
        raise InvalidArgument(field, f"at most {_MAX_REQUEST_ID} printable characters")
    return request_id


def fingerprint(request: Message) -> bytes:
    """SHA-256 of ``request``'s deterministic serialization, its ``request_id`` cleared
    (when it has one), so two sends of the same request match and nothing else does.

    Deterministic serialization orders map entries; it is stable for one schema, and
    fields a client leaves unset (or at their defaults) do not change it.
    """
    if "request_id" in request.DESCRIPTOR.fields_by_name:
        copy = type(request)()
        copy.CopyFrom(request)
        copy.ClearField("request_id")
        request = copy
    return hashlib.sha256(request.SerializeToString(deterministic=True)).digest()


async def claim(
    conn: asyncpg.Connection,
    tenant: str,
    method: str,
    request_id: str,
    response_type: type[M],
    *,
    ttl_s: int,
    request: Message | None = None,
    field: str = "request_id",
) -> M | None:
    """Claims ``request_id`` for this transaction, or returns the response stored by
    the transaction that claimed it before (a replay). Empty ids claim nothing.

    With ``request`` (the whole request message), a replay must be of the same request:
    when the key was claimed by a request with another fingerprint, INVALID_ARGUMENT
    names ``field``. Keys claimed without a fingerprint (before fingerprints existed,
    or by a caller that passes no ``request``) replay whatever the retry says.
    """
    if not request_id:
        return None
    validate_request_id(request_id, field=field)
    ours = fingerprint(request) if request is not None else None
    inserted = await conn.fetchval(
        """
        INSERT INTO memory.request_ids (tenant, method, request_id, fingerprint, expire_time)
        VALUES ($1, $2, $3, $5, now() + make_interval(secs => $4))
        ON CONFLICT (tenant, method, request_id) DO UPDATE
            SET claim = EXCLUDED.claim, response = NULL, fingerprint = EXCLUDED.fingerprint,
                expire_time = EXCLUDED.expire_time
            WHERE memory.request_ids.expire_time < now()
        RETURNING claim
        """,
        tenant,
        method,
        request_id,
        float(ttl_s),
        ours,
    )
    if inserted is not None:
        return None
    stored = await conn.fetchrow(
        "SELECT response, fingerprint FROM memory.request_ids"
        " WHERE tenant = $1 AND method = $2 AND request_id = $3",
        tenant,
        method,
        request_id,
    )
    if stored is None:  # purged since the insert saw it: nothing to replay
        return None
    theirs = stored["fingerprint"]
    if ours is not None and theirs is not None and bytes(theirs) != ours:
        raise InvalidArgument(field, REUSED_FOR_ANOTHER_REQUEST)
    response = stored["response"]
    return response_type.FromString(response) if response is not None else None


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
