"""MemoryService RPCs: Sessions: create, get, list, update, delete, undelete.

Also the helpers the other session-scoped groups (messages, working memory,
checkpoints) share: input validation that reports every bad field at once, and the
session lookup that turns "no such session for this tenant" into NOT_FOUND.

Deletion is soft (AIP-164) unless ``AGENTMESH_MEMORY_SESSION_PURGE_AFTER_S`` is 0:
DeleteSession stamps ``delete_time`` and ``purge_time`` and keeps the row with its
messages, checkpoints and working memory; every read and write treats the session as
missing (``LIVE``), its id stays taken, UndeleteSession clears the stamps before the
purge time, and the janitor (``janitor.py``) purges it afterwards. Working memory is
kept (not deleted at soft delete) so that an undelete gives the session back whole;
Redis still expires it on its own TTL meanwhile, and the purge deletes what is left.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, NoReturn, TypeVar

import asyncpg  # type: ignore[import-untyped]
from google.protobuf import empty_pb2, json_format, struct_pb2

from agentmesh.core.contract import ServicerContext
from agentmesh.core.errors import Aborted, AlreadyExists, InvalidArgument, NotFound
from agentmesh.core.filtering import (
    EQUALITY,
    TIME_RANGE,
    FieldRule,
    Term,
    parse_filter,
    timestamp_value,
)
from agentmesh.core.names import SESSIONS, new_id, validate_id
from agentmesh.core.paging import decode_page_token, encode_page_token, page_size
from agentmesh.memory import convert, idempotency
from agentmesh.memory.rpc import RpcGroup
from agentmesh.memory.stores.sessions import (
    LIVE,
    delete_session_threads,
    purge_due_session,
    working_memory_key,
)
from agentmesh.v1 import memory_pb2

T = TypeVar("T")

DEFAULT_PAGE_SIZE: Final = 50
MAX_DISPLAY_NAME: Final = 256
MAX_LABELS: Final = 64
MAX_SESSION_METADATA_BYTES: Final = 64 * 1024
_LABEL_KEY: Final = re.compile(r"^[a-z0-9_-]{1,63}$")
# The contract says "at most 63 characters", so an empty value is a valid label.
_LABEL_VALUE: Final = re.compile(r"^[a-z0-9_-]{0,63}$")
_MASKABLE: Final = ("display_name", "labels", "metadata")
_FILTER_RULES: Final = {
    "labels.*": FieldRule(EQUALITY),
    "create_time": TIME_RANGE,
    "update_time": TIME_RANGE,
    "delete_time": TIME_RANGE,
}
_COLUMNS: Final = (
    "id, display_name, labels, metadata, message_count, last_sequence, version,"
    " incarnation, create_time, update_time, delete_time, purge_time"
)
_NOT_PURGED: Final = "(delete_time IS NULL OR purge_time > now())"
"""Live, or deleted and still within its purge window (what ``show_deleted`` lists)."""


# ------------------------------------------------------------------ validation


class Violations:
    """Collects field violations so one INVALID_ARGUMENT names every bad field."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, description: str) -> None:
        self.items.append((field, description))

    def check(self, validate: Callable[[], T]) -> T | None:
        """Runs a validator that raises InvalidArgument; keeps its violations instead."""
        try:
            return validate()
        except InvalidArgument as exc:
            self.items.extend(exc.violations)
            return None

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


def struct_json(value: struct_pb2.Struct, *, field: str, max_bytes: int) -> str:
    """``convert.struct_to_json`` that also reports values JSON cannot carry (NaN,
    infinities) as INVALID_ARGUMENT instead of an internal error."""
    try:
        return convert.struct_to_json(value, field=field, max_bytes=max_bytes)
    except (ValueError, json_format.Error) as exc:
        raise InvalidArgument(field, f"not representable as JSON: {exc}") from None


def check_labels(labels: Mapping[str, str], violations: Violations, *, field: str) -> None:
    if len(labels) > MAX_LABELS:
        violations.add(field, f"at most {MAX_LABELS} labels")
    for key, value in labels.items():
        where = f"{field}[{json.dumps(key)}]"
        if not _LABEL_KEY.match(key):
            violations.add(where, "key must be 1-63 characters of a-z, 0-9, '_' and '-'")
        if not _LABEL_VALUE.match(value):
            violations.add(where, "value must be at most 63 characters of a-z, 0-9, '_' and '-'")


def check_display_name(display_name: str, violations: Violations, *, field: str) -> None:
    if len(display_name) > MAX_DISPLAY_NAME:
        violations.add(field, f"at most {MAX_DISPLAY_NAME} characters")


def check_request_id(request_id: str, violations: Violations) -> None:
    violations.check(lambda: idempotency.validate_request_id(request_id))


# ------------------------------------------------------------------ storage


def session_proto(row: asyncpg.Record) -> memory_pb2.Session:
    """A ``memory.sessions`` row (``_COLUMNS``) as the wire Session."""
    # None leaves a message field unset: delete_time and purge_time of a live session.
    return memory_pb2.Session(
        name=SESSIONS.format(row["id"]),
        display_name=row["display_name"],
        labels=json.loads(row["labels"]),
        metadata=convert.json_to_struct(row["metadata"]),
        message_count=row["message_count"],
        last_sequence=row["last_sequence"],
        create_time=convert.timestamp(row["create_time"]),
        update_time=convert.timestamp(row["update_time"]),
        etag=convert.session_etag(row["version"], row["incarnation"]),
        delete_time=convert.timestamp(row["delete_time"]),
        purge_time=convert.timestamp(row["purge_time"]),
    )


def _rfc3339(value: datetime) -> str:
    """A time as the JSON API prints it (``2026-11-24T22:00:03.088894Z``)."""
    stamp = convert.timestamp(value)
    assert stamp is not None
    return stamp.ToJsonString()


class SessionDeletedError(AlreadyExists):
    """CreateSession with the id of a deleted session that is not purged yet (AIP-164).

    ALREADY_EXISTS like a live session's id, but with its own reason: the session is
    not there to be used (a "create, or use the one that exists" client must not take
    it for its own), and the message and metadata say when the id becomes free.
    """

    def __init__(self, session_id: str, delete_time: datetime, purge_time: datetime) -> None:
        name = SESSIONS.format(session_id)
        super().__init__(SESSIONS.resource_type, name)
        purge = _rfc3339(purge_time)
        self.message = (
            f"{SESSIONS.resource_type} {name!r} already exists as a deleted session:"
            f" UndeleteSession restores it until its purge at {purge}, when the id is free"
            " again"
        )
        self.args = (self.message,)
        self.reason = "SESSION_DELETED"
        self.metadata = {
            **self.metadata,
            "delete_time": _rfc3339(delete_time),
            "purge_time": purge,
        }


class SessionNotDeletedError(AlreadyExists):
    """UndeleteSession of a session that is not deleted (AIP-164: ALREADY_EXISTS)."""

    _verb = "exists and is not deleted: there is nothing to undelete"


# ------------------------------------------------------------------ listing


def _filter_sql(terms: Sequence[Term], params: list[Any]) -> list[str]:
    """SQL conditions for parsed filter terms, appending their values to ``params``.
    Field names and operators come from ``_FILTER_RULES``, never from raw input."""
    conditions: list[str] = []
    for term in terms:
        if term.field.startswith("labels."):
            params.append(json.dumps({term.key: term.value}))
            conditions.append(f"labels @> ${len(params)}::jsonb")
        else:
            params.append(timestamp_value(term.value))
            conditions.append(f"{term.field} {term.op} ${len(params)}")
    return conditions


def _page_after_sql(position: Mapping[str, Any] | None, params: list[Any]) -> list[str]:
    """Keyset condition: rows after the last one of the previous page in the list order
    (create_time descending, then id ascending)."""
    if position is None:
        return []
    # Tokens are not signed: a client can build one, so check what reaches SQL.
    created = last_id = None
    with contextlib.suppress(KeyError, ValueError, TypeError):
        created = datetime.fromisoformat(position["t"])
        last_id = position["id"]
    if created is None or created.tzinfo is None or not isinstance(last_id, str):
        raise InvalidArgument("page_token", "not a page token issued by this method")
    params.extend([created, last_id])
    t, i = len(params) - 1, len(params)
    return [f"(create_time < ${t} OR (create_time = ${t} AND id > ${i}))"]


# ------------------------------------------------------------------ RPCs


class SessionRpcs(RpcGroup):
    """Sessions: create, get, list, update, delete, undelete."""

    async def CreateSession(
        self, request: memory_pb2.CreateSessionRequest, context: ServicerContext
    ) -> memory_pb2.Session:
        session = request.session
        violations = Violations()
        if request.session_id:
            violations.check(lambda: validate_id(request.session_id, field="session_id"))
        check_request_id(request.request_id, violations)
        check_display_name(session.display_name, violations, field="session.display_name")
        check_labels(session.labels, violations, field="session.labels")
        metadata = violations.check(
            lambda: struct_json(
                session.metadata, field="session.metadata", max_bytes=MAX_SESSION_METADATA_BYTES
            )
        )
        violations.raise_if_any()
        session_id = request.session_id or new_id()
        tenant = self.tenant()

        async with self.deps.pool.acquire() as conn, conn.transaction():
            replay = await idempotency.claim(
                conn,
                tenant,
                "CreateSession",
                request.request_id,
                memory_pb2.Session,
                ttl_s=self.deps.settings.request_id_ttl_s,
                request=request,
            )
            if replay is not None:
                return replay
            values = (session.display_name, json.dumps(dict(session.labels)), metadata)
            row = await _insert_session(conn, tenant, session_id, *values)
            # A deleted session past its purge time that the janitor has not reached yet
            # no longer holds the id: purge it here and take the id.
            if row is None and await purge_due_session(conn, self.deps.redis, tenant, session_id):
                row = await _insert_session(conn, tenant, session_id, *values)
            if row is None:
                # Raising rolls the request_id claim back with the transaction.
                await _raise_taken(conn, tenant, session_id)
            created = session_proto(row)
            await idempotency.remember(conn, tenant, "CreateSession", request.request_id, created)
        return created

    async def GetSession(
        self, request: memory_pb2.GetSessionRequest, context: ServicerContext
    ) -> memory_pb2.Session:
        session_id = SESSIONS.parse(request.name)
        row = await self.deps.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM memory.sessions WHERE tenant = $1 AND id = $2 AND {LIVE}",
            self.tenant(),
            session_id,
        )
        if row is None:
            raise NotFound(SESSIONS.resource_type, request.name)
        return session_proto(row)

    async def ListSessions(
        self, request: memory_pb2.ListSessionsRequest, context: ServicerContext
    ) -> memory_pb2.ListSessionsResponse:
        size = page_size(request.page_size, default=DEFAULT_PAGE_SIZE)
        terms = parse_filter(request.filter, _FILTER_RULES)
        query = {"filter": request.filter}
        if request.show_deleted:  # absent otherwise, so tokens issued before stay valid
            query["show_deleted"] = "true"
        position = decode_page_token(request.page_token, query)
        params: list[Any] = [self.tenant()]
        conditions = [
            "tenant = $1",
            _NOT_PURGED if request.show_deleted else LIVE,
            *_filter_sql(terms, params),
            *_page_after_sql(position, params),
        ]
        params.append(size + 1)  # one extra row says whether another page exists
        rows = await self.deps.pool.fetch(
            f"SELECT {_COLUMNS} FROM memory.sessions WHERE {' AND '.join(conditions)}"
            f" ORDER BY create_time DESC, id LIMIT ${len(params)}",
            *params,
        )
        page = rows[:size]
        next_token = ""
        if len(rows) > size:
            last = page[-1]
            next_token = encode_page_token(
                {"t": last["create_time"].isoformat(), "id": last["id"]}, query
            )
        return memory_pb2.ListSessionsResponse(
            sessions=[session_proto(row) for row in page], next_page_token=next_token
        )

    async def UpdateSession(
        self, request: memory_pb2.UpdateSessionRequest, context: ServicerContext
    ) -> memory_pb2.Session:
        session = request.session
        violations = Violations()
        session_id = violations.check(lambda: SESSIONS.parse(session.name, field="session.name"))
        paths = violations.check(lambda: _mask_paths(request.update_mask.paths, session))
        expected = (
            violations.check(lambda: convert.parse_session_etag(session.etag, field="session.etag"))
            if session.etag
            else None
        )
        display_name = labels = metadata = None
        if paths is not None and "display_name" in paths:
            check_display_name(session.display_name, violations, field="session.display_name")
            display_name = session.display_name
        if paths is not None and "labels" in paths:
            check_labels(session.labels, violations, field="session.labels")
            labels = json.dumps(dict(session.labels))
        if paths is not None and "metadata" in paths:
            metadata = violations.check(
                lambda: struct_json(
                    session.metadata,
                    field="session.metadata",
                    max_bytes=MAX_SESSION_METADATA_BYTES,
                )
            )
        violations.raise_if_any()
        assert session_id is not None
        tenant = self.tenant()

        async with self.deps.pool.acquire() as conn, conn.transaction():
            # NULL means "not in the mask: keep the stored value"; one static statement
            # that checks the etag and writes, so the happy path is one round trip.
            # An etag matches only its own incarnation of the id (see convert).
            version, incarnation = expected or (None, None)
            row = await conn.fetchrow(
                "UPDATE memory.sessions SET"
                " display_name = COALESCE($4, display_name),"
                " labels = COALESCE($5::jsonb, labels),"
                " metadata = COALESCE($6::jsonb, metadata),"
                " version = version + 1, update_time = now()"
                f" WHERE tenant = $1 AND id = $2 AND {LIVE}"
                " AND ($3::bigint IS NULL OR (version = $3 AND incarnation = $7::uuid))"
                f" RETURNING {_COLUMNS}",
                tenant,
                session_id,
                version,
                display_name,
                labels,
                metadata,
                incarnation,
            )
            if row is None:
                await self._raise_missing_or_conflict(conn, tenant, session_id)
        return session_proto(row)

    async def DeleteSession(
        self, request: memory_pb2.DeleteSessionRequest, context: ServicerContext
    ) -> empty_pb2.Empty:
        violations = Violations()
        session_id = violations.check(lambda: SESSIONS.parse(request.name))
        expected = (
            violations.check(lambda: convert.parse_session_etag(request.etag))
            if request.etag
            else None
        )
        violations.raise_if_any()
        assert session_id is not None
        tenant = self.tenant()

        version, incarnation = expected or (None, None)
        purge_after_s = self.deps.settings.session_purge_after_s
        # Only a live session matches: deleting a deleted one changes nothing (its
        # purge_time stays) and is NOT_FOUND, or success with allow_missing.
        condition = (
            f"tenant = $1 AND id = $2 AND {LIVE}"
            " AND ($3::bigint IS NULL OR (version = $3 AND incarnation = $4::uuid))"
        )
        async with self.deps.pool.acquire() as conn, conn.transaction():
            if purge_after_s:
                # Soft delete: everything stays until the janitor purges it at purge_time.
                # The version moves, so etags read before the delete are stale after an
                # undelete.
                deleted = await conn.fetchval(
                    "UPDATE memory.sessions SET delete_time = now(),"
                    " purge_time = now() + make_interval(secs => $5), version = version + 1"
                    f" WHERE {condition} RETURNING id",
                    tenant,
                    session_id,
                    version,
                    incarnation,
                    float(purge_after_s),
                )
            else:
                # Messages go with the row (ON DELETE CASCADE).
                deleted = await conn.fetchval(
                    f"DELETE FROM memory.sessions WHERE {condition} RETURNING id",
                    tenant,
                    session_id,
                    version,
                    incarnation,
                )
            if deleted is None:
                if request.allow_missing and not await _is_live(conn, tenant, session_id):
                    return empty_pb2.Empty()
                await self._raise_missing_or_conflict(conn, tenant, session_id)
            if not purge_after_s:
                await delete_session_threads(conn, tenant, session_id)
                # Redis last and still inside the transaction: if it fails, the delete
                # rolls back and a retry removes everything; working memory left by a
                # racing update is ignored by the next incarnation of the id (working.py).
                await self.deps.redis.delete(working_memory_key(tenant, session_id))
        return empty_pb2.Empty()

    async def UndeleteSession(
        self, request: memory_pb2.UndeleteSessionRequest, context: ServicerContext
    ) -> memory_pb2.Session:
        session_id = SESSIONS.parse(request.name)
        tenant = self.tenant()
        async with self.deps.pool.acquire() as conn:
            # Past its purge time a session is purged for every purpose, whether or not
            # the janitor has removed the row yet. The version moves: a new etag.
            row = await conn.fetchrow(
                "UPDATE memory.sessions SET delete_time = NULL, purge_time = NULL,"
                " version = version + 1"
                " WHERE tenant = $1 AND id = $2 AND delete_time IS NOT NULL AND purge_time > now()"
                f" RETURNING {_COLUMNS}",
                tenant,
                session_id,
            )
            if row is None:
                if await _is_live(conn, tenant, session_id):
                    raise SessionNotDeletedError(SESSIONS.resource_type, request.name)
                raise NotFound(SESSIONS.resource_type, request.name)
        return session_proto(row)

    async def _raise_missing_or_conflict(
        self, conn: asyncpg.Connection, tenant: str, session_id: str
    ) -> NoReturn:
        """After a conditional write matched no row: NOT_FOUND or an etag conflict."""
        if not await _is_live(conn, tenant, session_id):
            raise NotFound(SESSIONS.resource_type, SESSIONS.format(session_id))
        raise Aborted(
            "ETAG_MISMATCH",
            f"session {SESSIONS.format(session_id)!r} changed since the etag was read;"
            " get it again and retry",
        )


async def _is_live(conn: asyncpg.Connection, tenant: str, session_id: str) -> bool:
    found: bool = await conn.fetchval(
        f"SELECT EXISTS (SELECT 1 FROM memory.sessions WHERE tenant = $1 AND id = $2 AND {LIVE})",
        tenant,
        session_id,
    )
    return found


async def _insert_session(
    conn: asyncpg.Connection,
    tenant: str,
    session_id: str,
    display_name: str,
    labels: str,
    metadata: str | None,
) -> asyncpg.Record | None:
    """Inserts a session; None when the tenant's id is taken (live or deleted)."""
    return await conn.fetchrow(
        "INSERT INTO memory.sessions (tenant, id, display_name, labels, metadata)"
        " VALUES ($1, $2, $3, $4::jsonb, $5::jsonb)"
        f" ON CONFLICT (tenant, id) DO NOTHING RETURNING {_COLUMNS}",
        tenant,
        session_id,
        display_name,
        labels,
        metadata,
    )


async def _raise_taken(conn: asyncpg.Connection, tenant: str, session_id: str) -> NoReturn:
    """CreateSession found the id taken: by a live session, or by a deleted one."""
    holder = await conn.fetchrow(
        "SELECT delete_time, purge_time FROM memory.sessions WHERE tenant = $1 AND id = $2",
        tenant,
        session_id,
    )
    if holder is not None and holder["delete_time"] is not None:
        raise SessionDeletedError(session_id, holder["delete_time"], holder["purge_time"])
    raise AlreadyExists(SESSIONS.resource_type, SESSIONS.format(session_id))


def _mask_paths(paths: Sequence[str], session: memory_pb2.Session) -> frozenset[str]:
    """The fields an update writes (contract, AIP-134): ``*`` means all of them; an
    empty mask means those set in ``session``, so a PATCH of one field from a web
    client never clears the others."""
    if "*" in paths:
        return frozenset(_MASKABLE)
    if not paths:
        present = {
            "display_name": bool(session.display_name),
            "labels": bool(session.labels),
            "metadata": session.HasField("metadata"),
        }
        return frozenset(path for path, is_set in present.items() if is_set)
    unknown = [path for path in paths if path not in _MASKABLE]
    if unknown:
        raise InvalidArgument(
            "update_mask",
            f"unknown paths {', '.join(map(repr, unknown))}; updatable: {', '.join(_MASKABLE)}",
        )
    return frozenset(paths)
