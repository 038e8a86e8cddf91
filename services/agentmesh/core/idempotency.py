"""Idempotent creates keyed by the client's ``request_id`` (AIP-155), for every service.

Inside the write's own transaction, :meth:`RequestIds.claim` inserts the key first,
together with the fingerprint of the request that carries it. PostgreSQL makes a
concurrent transaction with the same key wait on the unique index until the first
commits (then it sees the stored response and fingerprint: a retry of the same request
replays the response, a different request reusing the key is refused) or rolls back
(then it does the work itself). So a retried create never runs twice, a reused key
never returns another request's result, and a failed create leaves no key behind.

:meth:`RequestIds.once` is the whole block (claim, replay or write, remember); each
service keeps its keys in a ``request_ids`` table of its own schema, with the columns
``tenant, method, request_id, claim, fingerprint, response, expire_time`` (see the
Memory migrations).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar

import asyncpg  # type: ignore[import-untyped]
from google.protobuf.message import Message

from agentmesh.core.errors import InvalidArgument
from agentmesh.core.sql import delete_batch
from agentmesh.core.validation import validate_request_id

M = TypeVar("M", bound=Message)

REUSED_FOR_ANOTHER_REQUEST: Final = (
    "already used for a different request; a retry must repeat the original request"
    " exactly, a new request needs a new request_id"
)
_TABLE: Final = re.compile(r"^[a-z_]+\.request_ids$")


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


@dataclass(frozen=True)
class RequestIds:
    """One service's idempotency keys: its ``<schema>.request_ids`` table and how long a
    key is remembered."""

    table: str
    """``<schema>.request_ids``: a name from the code, never from a client."""
    ttl_s: int
    """Seconds a key (and the response it replays) is kept."""

    def __post_init__(self) -> None:
        if not _TABLE.fullmatch(self.table):
            raise ValueError(f"not a request_ids table: {self.table!r}")

    async def once(
        self,
        conn: asyncpg.Connection,
        tenant: str,
        method: str,
        request: Message,
        response_type: type[M],
        write: Callable[[], Awaitable[M]],
        *,
        request_id: str | None = None,
        field: str = "request_id",
    ) -> M:
        """Runs ``write`` at most once per ``request_id``, in the caller's transaction:
        claims the key, replays the stored response when the key was claimed before by
        the same request (INVALID_ARGUMENT on ``field`` when by another), otherwise
        writes and remembers the response. ``request_id`` defaults to the request's own
        field; an empty one just writes."""
        key = getattr(request, "request_id", "") if request_id is None else request_id
        replay = await self.claim(
            conn, tenant, method, key, response_type, request=request, field=field
        )
        if replay is not None:
            return replay
        response = await write()
        await self.remember(conn, tenant, method, key, response)
        return response

    async def claim(
        self,
        conn: asyncpg.Connection,
        tenant: str,
        method: str,
        request_id: str,
        response_type: type[M],
        *,
        request: Message | None = None,
        field: str = "request_id",
    ) -> M | None:
        """Claims ``request_id`` for this transaction, or returns the response stored by
        the transaction that claimed it before (a replay). Empty ids claim nothing.

        With ``request`` (the whole request message), a replay must be of the same
        request: when the key was claimed by a request with another fingerprint,
        INVALID_ARGUMENT names ``field``. Keys claimed without a fingerprint (before
        fingerprints existed) replay whatever the retry says. For a batch whose items
        carry keys of their own, call it once per item (sorted by key, so that two
        overlapping batches cannot deadlock), then :meth:`remember` each.
        """
        if not request_id:
            return None
        validate_request_id(request_id, field=field)
        ours = fingerprint(request) if request is not None else None
        inserted = await conn.fetchval(
            f"""
            INSERT INTO {self.table} (tenant, method, request_id, fingerprint, expire_time)
            VALUES ($1, $2, $3, $5, now() + make_interval(secs => $4))
            ON CONFLICT (tenant, method, request_id) DO UPDATE
                SET claim = EXCLUDED.claim, response = NULL,
                    fingerprint = EXCLUDED.fingerprint, expire_time = EXCLUDED.expire_time
                WHERE {self.table}.expire_time < now()
            RETURNING claim
            """,
            tenant,
            method,
            request_id,
            float(self.ttl_s),
            ours,
        )
        if inserted is not None:
            return None
        stored = await conn.fetchrow(
            f"SELECT response, fingerprint FROM {self.table}"
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
        self,
        conn: asyncpg.Connection,
        tenant: str,
        method: str,
        request_id: str,
        response: Message,
    ) -> None:
        """Stores the response of a claimed request, in the same transaction as the write."""
        if not request_id:
            return
        await conn.execute(
            f"UPDATE {self.table} SET response = $4"
            " WHERE tenant = $1 AND method = $2 AND request_id = $3",
            tenant,
            method,
            request_id,
            response.SerializeToString(),
        )

    async def purge_expired(self, conn: asyncpg.Connection, limit: int) -> int:
        """Deletes at most ``limit`` expired keys (any tenant: housekeeping); returns how
        many. Re-checked on the row, so a key claimed again meanwhile stays."""
        # expire_time < now(): the test claim() uses to take an expired key over.
        return await delete_batch(conn, self.table, "expire_time < now()", limit)
