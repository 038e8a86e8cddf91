"""MemoryService RPCs: Sessions: create, get, list, update, delete.

Also the helpers the other session-scoped groups (messages, working memory) share:
input validation that reports every bad field at once, and the session lookup that
turns "no such session for this tenant" into NOT_FOUND.
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
}
_COLUMNS: Final = (
    "id, display_name, labels, metadata, message_count, last_sequence, version,"
    " incarnation, create_time, update_time"
)


# ------------------------------------------------------------------ composition


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
    )


async def session_create_time(conn: asyncpg.Connection, tenant: str, session_id: str) -> datetime:
    """The create time of the tenant's session (it tells incarnations of one id apart);
    NOT_FOUND when the tenant has no such session."""
    created: datetime | None = await conn.fetchval(
        "SELECT create_time FROM memory.sessions WHERE tenant = $1 AND id = $2",
        tenant,
        session_id,
    )
    if created is None:
        raise NotFound(SESSIONS.resource_type, SESSIONS.format(session_id))
    return created


def working_memory_key(tenant: str, session_id: str) -> str:
    """The Redis hash of a session's working memory. Session ids never contain ':',
    so the key is unambiguous even for tenants that do."""
    return f"agentmesh:wm:{tenant}:{session_id}"


async def delete_session_threads(
    conn: asyncpg.Connection,
    tenant: str,
    session_id: str,
    *,
    tables: Sequence[str] = ("memory.checkpoint_writes", "memory.checkpoints"),
) -> None:
    """Deletes the LangGraph checkpoints of a session's threads, in the caller's transaction.

    Hook for the checkpoint tables, which another module owns: by convention a
    session's threads have ``thread_id = <session id>`` or start with ``<session id>:``,
    and each table has ``tenant`` and ``thread_id`` columns. A table that does not exist
    (yet) is skipped (``to_regclass``), so sessions work before checkpoints land.
    ``tables`` is a parameter only so tests can point the hook at scratch tables.
    """
    # Session ids are [a-z0-9-], so the LIKE pattern has no wildcard to escape.
    prefix = session_id + ":%"
    for table in tables:
        regclass = await conn.fetchval("SELECT to_regclass($1)::text", table)
        if regclass is None:
            continue
        await conn.execute(
            f"DELETE FROM {regclass}"  # a name the catalog resolved, not client input
            " WHERE tenant = $1 AND (thread_id = $2 OR thread_id LIKE $3)",
            tenant,
            session_id,
            prefix,
        )


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
    """Sessions: create, get, list, update, delete."""

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
                ttl_s=self.deps.settings.memory_request_id_ttl_s,
                request=request,
            )
            if replay is not None:
                return replay
            row = await conn.fetchrow(
                "INSERT INTO memory.sessions (tenant, id, display_name, labels, metadata)"
                " VALUES ($1, $2, $3, $4::jsonb, $5::jsonb)"
                f" ON CONFLICT (tenant, id) DO NOTHING RETURNING {_COLUMNS}",
                tenant,
                session_id,
                session.display_name,
                json.dumps(dict(session.labels)),
                metadata,
            )
            if row is None:
                # Raising rolls the request_id claim back with the transaction.
                raise AlreadyExists(SESSIONS.resource_type, SESSIONS.format(session_id))
            created = session_proto(row)
            await idempotency.remember(conn, tenant, "CreateSession", request.request_id, created)
        return created

    async def GetSession(
        self, request: memory_pb2.GetSessionRequest, context: ServicerContext
    ) -> memory_pb2.Session:
        session_id = SESSIONS.parse(request.name)
        row = await self.deps.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM memory.sessions WHERE tenant = $1 AND id = $2",
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
        position = decode_page_token(request.page_token, query)
        params: list[Any] = [self.tenant()]
        conditions = [
            "tenant = $1",
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
                " WHERE tenant = $1 AND id = $2"
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
        async with self.deps.pool.acquire() as conn, conn.transaction():
            # Messages go with the row (ON DELETE CASCADE).
            deleted = await conn.fetchval(
                "DELETE FROM memory.sessions WHERE tenant = $1 AND id = $2"
                " AND ($3::bigint IS NULL OR (version = $3 AND incarnation = $4::uuid))"
                " RETURNING id",
                tenant,
                session_id,
                version,
                incarnation,
            )
            if deleted is None:
                if request.allow_missing and not await self._exists(conn, tenant, session_id):
                    return empty_pb2.Empty()
                await self._raise_missing_or_conflict(conn, tenant, session_id)
            await delete_session_threads(conn, tenant, session_id)
            # Redis last and still inside the transaction: if it fails, the delete rolls
            # back and a retry removes everything; working memory left by a racing
            # update is ignored by the next incarnation of the id (see working.py).
            await self.deps.redis.delete(working_memory_key(tenant, session_id))
        return empty_pb2.Empty()

    @staticmethod
    async def _exists(conn: asyncpg.Connection, tenant: str, session_id: str) -> bool:
        found: bool = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM memory.sessions WHERE tenant = $1 AND id = $2)",
            tenant,
            session_id,
        )
        return found

    async def _raise_missing_or_conflict(
        self, conn: asyncpg.Connection, tenant: str, session_id: str
    ) -> NoReturn:
        """After a conditional write matched no row: NOT_FOUND or an etag conflict."""
        if not await self._exists(conn, tenant, session_id):
            raise NotFound(SESSIONS.resource_type, SESSIONS.format(session_id))
        raise Aborted(
            "ETAG_MISMATCH",
            f"session {SESSIONS.format(session_id)!r} changed since the etag was read;"
            " get it again and retry",
        )


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
