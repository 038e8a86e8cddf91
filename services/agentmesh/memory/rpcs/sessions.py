"""MemoryService RPCs: Sessions: create, get, list, update, delete, undelete.

Deletion is soft (AIP-164) unless ``AGENTMESH_MEMORY_SESSION_PURGE_AFTER_S`` is 0:
DeleteSession stamps ``delete_time`` and ``purge_time`` and keeps the row with its
messages, checkpoints and working memory; every read and write treats the session as
missing, its id stays taken, UndeleteSession clears the stamps before the purge time,
and the janitor (``janitor.py``) purges it afterwards. Working memory is kept (not
deleted at soft delete) so that an undelete gives the session back whole; Redis still
expires it on its own TTL meanwhile, and the purge deletes what is left. The rules are
in ``domain/sessions.py``, the SQL in ``stores/sessions.py``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Final

import asyncpg  # type: ignore[import-untyped]
from google.protobuf import empty_pb2

from agentmesh.core.contract import ServicerContext
from agentmesh.core.errors import NotFound
from agentmesh.core.filtering import EQUALITY, TIME_RANGE, FieldRule, parse_filter
from agentmesh.core.names import SESSIONS, new_id, validate_id
from agentmesh.core.offload import convert_sized
from agentmesh.core.paging import Keyset, page_size
from agentmesh.core.sql import item_bytes
from agentmesh.core.validation import (
    Violations,
    check_display_name,
    check_labels,
    validate_request_id,
)
from agentmesh.memory import convert
from agentmesh.memory.domain.sessions import (
    delete_refusal,
    is_soft_delete,
    mask_paths,
    taken_error,
    undelete_refusal,
    write_refusal,
)
from agentmesh.memory.rpc import RpcGroup, listing
from agentmesh.memory.stores.sessions import (
    get_session,
    hard_delete_session,
    insert_session,
    list_sessions,
    purge_due_session,
    session_holder,
    session_is_live,
    soft_delete_session,
    undelete_session,
    update_session,
)
from agentmesh.v1 import memory_pb2

DEFAULT_PAGE_SIZE: Final = 50
MAX_SESSION_METADATA_BYTES: Final = 64 * 1024
PAGE: Final = Keyset(datetime, str)
"""ListSessions pages by (create_time, id): newest first, then by id."""
_FILTER_RULES: Final = {
    "labels.*": FieldRule(EQUALITY),
    "create_time": TIME_RANGE,
    "update_time": TIME_RANGE,
    "delete_time": TIME_RANGE,
}


def session_proto(row: asyncpg.Record) -> memory_pb2.Session:
    """A ``memory.sessions`` row (``stores.sessions.COLUMNS``) as the wire Session."""
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


def _metadata_json(session: memory_pb2.Session, violations: Violations) -> str | None:
    return violations.check(
        lambda: convert.struct_to_jsonb(
            session.metadata, field="session.metadata", max_bytes=MAX_SESSION_METADATA_BYTES
        )
    )


def _present(session: memory_pb2.Session) -> frozenset[str]:
    """The updatable fields ``session`` sets (what an empty update mask writes)."""
    present = {
        "display_name": bool(session.display_name),
        "labels": bool(session.labels),
        "metadata": session.HasField("metadata"),
    }
    return frozenset(path for path, is_set in present.items() if is_set)


class SessionRpcs(RpcGroup):
    """Sessions: create, get, list, update, delete, undelete."""

    async def CreateSession(
        self, request: memory_pb2.CreateSessionRequest, context: ServicerContext
    ) -> memory_pb2.Session:
        session = request.session
        violations = Violations()
        if request.session_id:
            violations.check(lambda: validate_id(request.session_id, field="session_id"))
        violations.check(lambda: validate_request_id(request.request_id))
        check_display_name(session.display_name, violations, field="session.display_name")
        check_labels(session.labels, violations, field="session.labels")
        metadata = _metadata_json(session, violations)
        violations.raise_if_any()
        session_id = request.session_id or new_id()
        tenant = self.tenant()
        values = (session.display_name, json.dumps(dict(session.labels)), metadata)
        size = len(values[1]) + len(metadata or "")
        await self.deps.quotas.admit(tenant, "sessions", rows=1, size=size)
        created = False
        try:
            made, created = await self._create_session(tenant, session_id, values, request)
            return made
        finally:
            if not created:
                # Not created (the id is taken, a replay of the request_id, a failed
                # write): the quota it was admitted against is free again, so a client
                # that creates an existing id on every call (the Conductor's
                # create_session) uses none.
                self.deps.quotas.release(tenant, "sessions", rows=1, size=size)

    async def _create_session(
        self,
        tenant: str,
        session_id: str,
        values: tuple[str, str, str | None],
        request: memory_pb2.CreateSessionRequest,
    ) -> tuple[memory_pb2.Session, bool]:
        """The session created (or, for a repeated ``request_id``, the one the first
        call created) and whether this call inserted it.

        Without a ``request_id`` the insert is one statement in its own transaction
        (one round trip, not BEGIN, INSERT, COMMIT); only a taken id goes on to the
        transaction that may purge a deleted session past its purge time."""
        if not request.request_id:
            row = await insert_session(self.deps.pool, tenant, session_id, *values)
            if row is not None:
                return session_proto(row), True
        inserted = False
        async with self.deps.pool.acquire() as conn, conn.transaction():

            async def write() -> memory_pb2.Session:
                row = await insert_session(conn, tenant, session_id, *values)
                # A deleted session past its purge time that the janitor has not reached
                # yet no longer holds the id: purge it here and take the id.
                if row is None and await purge_due_session(
                    conn, self.deps.redis, tenant, session_id
                ):
                    row = await insert_session(conn, tenant, session_id, *values)
                if row is None:
                    # Raising rolls the request_id claim back with the transaction.
                    raise taken_error(session_id, await session_holder(conn, tenant, session_id))
                nonlocal inserted
                inserted = True
                return session_proto(row)

            made = await self.deps.request_ids.once(
                conn, tenant, "CreateSession", request, memory_pb2.Session, write
            )
        return made, inserted

    async def GetSession(
        self, request: memory_pb2.GetSessionRequest, context: ServicerContext
    ) -> memory_pb2.Session:
        session_id = SESSIONS.parse(request.name)
        row = await get_session(self.deps.pool, self.tenant(), session_id)
        if row is None:
            raise NotFound(SESSIONS.resource_type, request.name)
        return session_proto(row)

    @listing
    async def ListSessions(
        self, request: memory_pb2.ListSessionsRequest, context: ServicerContext
    ) -> memory_pb2.ListSessionsResponse:
        size = page_size(request.page_size, default=DEFAULT_PAGE_SIZE)
        terms = parse_filter(request.filter, _FILTER_RULES)
        query = {"filter": request.filter}
        if request.show_deleted:  # absent otherwise, so tokens issued before stay valid
            query["show_deleted"] = "true"
        after = PAGE.decode(request.page_token, query)
        rows = await list_sessions(
            self.deps.pool,
            self.tenant(),
            terms=terms,
            show_deleted=request.show_deleted,
            after=after,
            limit=size + 1,  # one extra row says whether another page exists
            budget=self.deps.process.page_max_bytes,
        )
        page, next_token = PAGE.page(
            rows,
            size,
            query,
            key=lambda row: (row["create_time"], row["id"]),
            budget=self.deps.process.page_max_bytes,
            item_bytes=item_bytes,
        )
        sessions = await convert_sized(
            lambda: [session_proto(row) for row in page], sum(map(item_bytes, page))
        )
        return memory_pb2.ListSessionsResponse(sessions=sessions, next_page_token=next_token)

    async def UpdateSession(
        self, request: memory_pb2.UpdateSessionRequest, context: ServicerContext
    ) -> memory_pb2.Session:
        session = request.session
        violations = Violations()
        session_id = violations.check(lambda: SESSIONS.parse(session.name, field="session.name"))
        paths = violations.check(lambda: mask_paths(request.update_mask.paths, _present(session)))
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
            metadata = _metadata_json(session, violations)
        violations.raise_if_any()
        assert session_id is not None
        tenant = self.tenant()

        async with self.deps.pool.acquire() as conn, conn.transaction():
            # None means "not in the mask: keep the stored value".
            row = await update_session(
                conn,
                tenant,
                session_id,
                expected,
                display_name=display_name,
                labels=labels,
                metadata=metadata,
            )
            if row is None:
                raise write_refusal(
                    session_id, live=await session_is_live(conn, tenant, session_id)
                )
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
        purge_after_s = self.deps.settings.session_purge_after_s

        async with self.deps.pool.acquire() as conn, conn.transaction():
            # Only a live session matches: deleting a deleted one changes nothing.
            if is_soft_delete(purge_after_s):
                deleted = await soft_delete_session(
                    conn, tenant, session_id, expected, purge_after_s=purge_after_s
                )
            else:
                deleted = await hard_delete_session(
                    conn, self.deps.redis, tenant, session_id, expected
                )
            if not deleted:
                live = await session_is_live(conn, tenant, session_id)
                refusal = delete_refusal(session_id, live=live, allow_missing=request.allow_missing)
                if refusal is not None:
                    raise refusal
        return empty_pb2.Empty()

    async def UndeleteSession(
        self, request: memory_pb2.UndeleteSessionRequest, context: ServicerContext
    ) -> memory_pb2.Session:
        session_id = SESSIONS.parse(request.name)
        tenant = self.tenant()
        async with self.deps.pool.acquire() as conn:
            row = await undelete_session(conn, tenant, session_id)
            if row is None:
                raise undelete_refusal(session_id, await session_holder(conn, tenant, session_id))
        return session_proto(row)
