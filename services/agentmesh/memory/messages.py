"""MemoryService RPCs: Message history: append and list.

Sequence numbers are allocated in exactly one place, ``_append``: under a row lock
on the session (``SELECT ... FOR UPDATE``), which serialises appends per session,
the batch takes ``last_sequence + 1 .. + n`` and the session row records the new
``last_sequence`` in the same transaction. Concurrent appends therefore queue on
the lock and never collide or leave gaps; appends to different sessions do not
contend at all.

Parts are stored as a ``jsonb`` array in the protobuf JSON mapping: an operator can
read a conversation with psql, later features (full-text search over history,
exports) can query it in SQL, and it is the same shape the HTTP API shows. The costs
are base64 for inline blobs (a third larger) and json_format's CPU per part; both
are small next to the database round trips of an append.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]
from google.protobuf import json_format, timestamp_pb2

from agentmesh.core.contract import ServicerContext
from agentmesh.core.errors import InvalidArgument, NotFound
from agentmesh.core.names import AGENTS, SESSIONS, new_id, validate_id
from agentmesh.core.paging import decode_page_token, encode_page_token, page_size
from agentmesh.memory import convert, idempotency
from agentmesh.memory.rpc import RpcGroup
from agentmesh.memory.sessions import Violations, check_request_id, struct_json
from agentmesh.memory.stores.sessions import LIVE
from agentmesh.v1 import common_pb2, memory_pb2

MAX_MESSAGES_PER_APPEND: Final = 100
MAX_MESSAGE_METADATA_BYTES: Final = 16 * 1024
DEFAULT_PAGE_SIZE: Final = 100

_ROLE_TO_DB: Final = {
    common_pb2.ROLE_USER: "user",
    common_pb2.ROLE_ASSISTANT: "assistant",
    common_pb2.ROLE_TOOL: "tool",
    common_pb2.ROLE_SYSTEM: "system",
}
_ROLE_FROM_DB: Final = {text: role for role, text in _ROLE_TO_DB.items()}
_COLUMNS: Final = (
    "session_id, sequence, message_id, role, parts, agent, tool_call_id, token_count,"
    " metadata, create_time"
)


def message_name(session_id: str, message_id: str) -> str:
    return f"{SESSIONS.format(session_id)}/messages/{message_id}"


def message_proto(row: asyncpg.Record) -> memory_pb2.Message:
    """A ``memory.messages`` row (``_COLUMNS``) as the wire Message."""
    # Unknown fields are skipped so a rolled-back server still reads rows a newer
    # one wrote (e.g. a Part kind added later) instead of failing the whole list.
    parts = [
        json_format.ParseDict(part, common_pb2.Part(), ignore_unknown_fields=True)
        for part in json.loads(row["parts"])
    ]
    message = memory_pb2.Message(
        name=message_name(row["session_id"], row["message_id"]),
        message_id=row["message_id"],
        sequence=row["sequence"],
        role=_ROLE_FROM_DB[row["role"]],
        parts=parts,
        agent=row["agent"],
        tool_call_id=row["tool_call_id"],
        token_count=row["token_count"],
        create_time=convert.timestamp(row["create_time"]),
    )
    metadata = convert.json_to_struct(row["metadata"])
    if metadata.fields:
        message.metadata.CopyFrom(metadata)
    return message


# ------------------------------------------------------------------ append


@dataclass(frozen=True, slots=True)
class _Incoming:
    """One validated message of an append, with its columns ready for storage."""

    message: memory_pb2.Message
    role: str
    parts_json: str
    metadata_json: str


def _parts_json(parts: Any, violations: Violations, *, field: str) -> str:
    if not parts:
        violations.add(field, "at least one part is required")
    encoded: list[Any] = []
    for j, part in enumerate(parts):
        if part.WhichOneof("kind") is None:
            violations.add(f"{field}[{j}]", "empty part: set one of text, data, blob or uri")
            continue
        try:
            encoded.append(json_format.MessageToDict(part, preserving_proto_field_name=True))
        except (ValueError, json_format.Error) as exc:  # NaN or infinity inside `data`
            violations.add(f"{field}[{j}].data", f"not representable as JSON: {exc}")
    return json.dumps(encoded, separators=(",", ":"))


def _validate_message(
    message: memory_pb2.Message, violations: Violations, *, field: str
) -> _Incoming | None:
    before = len(violations.items)
    if message.message_id:
        violations.check(lambda: validate_id(message.message_id, field=f"{field}.message_id"))
    role = _ROLE_TO_DB.get(message.role)
    if role is None:
        violations.add(
            f"{field}.role", "required: ROLE_USER, ROLE_ASSISTANT, ROLE_TOOL or ROLE_SYSTEM"
        )
    parts_json = _parts_json(message.parts, violations, field=f"{field}.parts")
    if message.agent:
        violations.check(lambda: AGENTS.parse(message.agent, field=f"{field}.agent"))
    if message.token_count < 0:
        violations.add(f"{field}.token_count", "must not be negative")
    metadata_json = violations.check(
        lambda: struct_json(
            message.metadata, field=f"{field}.metadata", max_bytes=MAX_MESSAGE_METADATA_BYTES
        )
    )
    if len(violations.items) > before or role is None or metadata_json is None:
        return None
    return _Incoming(message, role, parts_json, metadata_json)


def _validate_append(request: memory_pb2.AppendMessagesRequest) -> tuple[str, list[_Incoming]]:
    """Checks the whole batch before touching storage; every bad field is reported."""
    violations = Violations()
    session_id = violations.check(lambda: SESSIONS.parse(request.parent, field="parent"))
    check_request_id(request.request_id, violations)
    count = len(request.messages)
    if not 1 <= count <= MAX_MESSAGES_PER_APPEND:
        violations.add("messages", f"1-{MAX_MESSAGES_PER_APPEND} messages per call, got {count}")
    incoming = [
        _validate_message(message, violations, field=f"messages[{i}]")
        for i, message in enumerate(request.messages)
    ]
    violations.raise_if_any()
    assert session_id is not None
    return session_id, [item for item in incoming if item is not None]


async def _stored_by_id(
    conn: asyncpg.Connection, tenant: str, session_id: str, message_ids: list[str]
) -> dict[str, memory_pb2.Message]:
    if not message_ids:
        return {}
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM memory.messages"
        " WHERE tenant = $1 AND session_id = $2 AND message_id = ANY($3::text[])",
        tenant,
        session_id,
        message_ids,
    )
    return {row["message_id"]: message_proto(row) for row in rows}


async def _insert(
    conn: asyncpg.Connection,
    tenant: str,
    session_id: str,
    rows: list[tuple[memory_pb2.Message, _Incoming]],
) -> None:
    """All new rows in one statement (one round trip, whatever the batch size)."""
    await conn.execute(
        "INSERT INTO memory.messages (tenant, session_id, sequence, message_id, role, parts,"
        " agent, tool_call_id, token_count, metadata)"
        " SELECT $1, $2, s, m, r, p::jsonb, a, t, c, md::jsonb"
        " FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[],"
        " $8::text[], $9::bigint[], $10::text[]) AS u(s, m, r, p, a, t, c, md)",
        tenant,
        session_id,
        [stored.sequence for stored, _ in rows],
        [stored.message_id for stored, _ in rows],
        [item.role for _, item in rows],
        [item.parts_json for _, item in rows],
        [stored.agent for stored, _ in rows],
        [stored.tool_call_id for stored, _ in rows],
        [stored.token_count for stored, _ in rows],
        [item.metadata_json for _, item in rows],
    )


async def _append(
    conn: asyncpg.Connection, tenant: str, session_id: str, incoming: list[_Incoming]
) -> list[memory_pb2.Message]:
    """Appends in the caller's transaction; the one place sequences are allocated."""
    # A deleted session is NOT_FOUND; a DeleteSession racing this append waits on the
    # lock or makes it wait, so the append lands before the delete or not at all.
    locked = await conn.fetchrow(
        "SELECT last_sequence, now() AS now FROM memory.sessions"
        f" WHERE tenant = $1 AND id = $2 AND {LIVE} FOR UPDATE",
        tenant,
        session_id,
    )
    if locked is None:
        raise NotFound(SESSIONS.resource_type, SESSIONS.format(session_id))
    # Read under the lock, so a concurrent append of the same message_id has committed
    # (and is seen here) or has not started: never a unique-violation race.
    known = await _stored_by_id(
        conn, tenant, session_id, [item.message.message_id for item in incoming]
    )
    created_at: datetime = locked["now"]  # now(): the time the rows get as create_time
    sequence: int = locked["last_sequence"]
    results: list[memory_pb2.Message] = []
    new_rows: list[tuple[memory_pb2.Message, _Incoming]] = []
    for item in incoming:
        if item.message.message_id in known:
            results.append(known[item.message.message_id])
            continue
        sequence += 1
        stored = memory_pb2.Message()
        stored.CopyFrom(item.message)
        stored.message_id = item.message.message_id or new_id()
        stored.name = message_name(session_id, stored.message_id)
        stored.sequence = sequence
        stored.create_time.FromDatetime(created_at)
        if not stored.metadata.fields:  # as read back: no metadata, not an empty one
            stored.ClearField("metadata")
        if item.message.message_id:  # the same id twice in one batch is stored once
            known[stored.message_id] = stored
        new_rows.append((stored, item))
        results.append(stored)
    if new_rows:
        await _insert(conn, tenant, session_id, new_rows)
        await conn.execute(
            "UPDATE memory.sessions SET last_sequence = $3,"
            " message_count = message_count + $4, update_time = now()"
            " WHERE tenant = $1 AND id = $2",
            tenant,
            session_id,
            sequence,
            len(new_rows),
        )
    return results


# ------------------------------------------------------------------ list


def _time(value: timestamp_pb2.Timestamp, violations: Violations, *, field: str) -> datetime | None:
    try:
        return convert.from_timestamp(value)
    except (ValueError, OverflowError):
        violations.add(field, "not a valid timestamp")
        return None


@dataclass(frozen=True, slots=True)
class _ListQuery:
    session_id: str
    size: int
    start: datetime | None
    end: datetime | None
    after_sequence: int
    descending: bool
    fingerprint: dict[str, str]


def _validate_list(request: memory_pb2.ListMessagesRequest) -> _ListQuery:
    violations = Violations()
    session_id = violations.check(lambda: SESSIONS.parse(request.parent, field="parent"))
    size = violations.check(lambda: page_size(request.page_size, default=DEFAULT_PAGE_SIZE))
    start = (
        _time(request.start_time, violations, field="start_time")
        if request.HasField("start_time")
        else None
    )
    end = (
        _time(request.end_time, violations, field="end_time")
        if request.HasField("end_time")
        else None
    )
    if start is not None and end is not None and start >= end:
        violations.add("end_time", "must be after start_time")
    if request.after_sequence < 0:
        violations.add("after_sequence", "must not be negative")
    violations.raise_if_any()
    assert session_id is not None
    assert size is not None
    # A page token is valid only for the same range, tail position and order.
    fingerprint = {
        "start": request.start_time.ToJsonString() if start else "",
        "end": request.end_time.ToJsonString() if end else "",
        "after": str(request.after_sequence),
        "desc": str(request.descending),
    }
    return _ListQuery(
        session_id, size, start, end, request.after_sequence, request.descending, fingerprint
    )


def _page_position(token: str, fingerprint: dict[str, str]) -> int | None:
    position = decode_page_token(token, fingerprint)
    if position is None:
        return None
    last = position.get("seq")
    # Tokens are not signed: a client can build one, so bound what reaches SQL (bigint).
    if not isinstance(last, int) or isinstance(last, bool) or not 0 <= last < 2**63:
        raise InvalidArgument("page_token", "not a page token issued by this method")
    return last


def _list_sql(query: _ListQuery, tenant: str, last: int | None) -> tuple[str, list[Any]]:
    params: list[Any] = [tenant, query.session_id]
    conditions = ["tenant = $1", "session_id = $2"]

    def where(condition: str, value: Any) -> None:
        params.append(value)
        conditions.append(condition.format(f"${len(params)}"))

    if query.after_sequence:
        where("sequence > {}", query.after_sequence)
    if query.start is not None:
        where("create_time >= {}", query.start)
    if query.end is not None:
        where("create_time < {}", query.end)
    if last is not None:
        where("sequence < {}" if query.descending else "sequence > {}", last)
    params.append(query.size + 1)  # one extra row says whether another page exists
    order = "DESC" if query.descending else "ASC"
    sql = (
        f"SELECT {_COLUMNS} FROM memory.messages WHERE {' AND '.join(conditions)}"
        f" ORDER BY sequence {order} LIMIT ${len(params)}"
    )
    return sql, params


# ------------------------------------------------------------------ RPCs


class MessageRpcs(RpcGroup):
    """Message history: append and list."""

    async def AppendMessages(
        self, request: memory_pb2.AppendMessagesRequest, context: ServicerContext
    ) -> memory_pb2.AppendMessagesResponse:
        session_id, incoming = _validate_append(request)
        tenant = self.tenant()
        async with self.deps.pool.acquire() as conn, conn.transaction():
            replay = await idempotency.claim(
                conn,
                tenant,
                "AppendMessages",
                request.request_id,
                memory_pb2.AppendMessagesResponse,
                ttl_s=self.deps.settings.request_id_ttl_s,
                request=request,
            )
            if replay is not None:
                return replay
            response = memory_pb2.AppendMessagesResponse(
                messages=await _append(conn, tenant, session_id, incoming)
            )
            await idempotency.remember(conn, tenant, "AppendMessages", request.request_id, response)
        return response

    async def ListMessages(
        self, request: memory_pb2.ListMessagesRequest, context: ServicerContext
    ) -> memory_pb2.ListMessagesResponse:
        query = _validate_list(request)
        last = _page_position(request.page_token, query.fingerprint)
        tenant = self.tenant()
        sql, params = _list_sql(query, tenant, last)
        async with self.deps.pool.acquire() as conn:
            exists = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM memory.sessions"
                f" WHERE tenant = $1 AND id = $2 AND {LIVE})",
                tenant,
                query.session_id,
            )
            if not exists:
                raise NotFound(SESSIONS.resource_type, request.parent)
            rows = await conn.fetch(sql, *params)
        page = rows[: query.size]
        next_token = ""
        if len(rows) > query.size:
            next_token = encode_page_token({"seq": page[-1]["sequence"]}, query.fingerprint)
        return memory_pb2.ListMessagesResponse(
            messages=[message_proto(row) for row in page], next_page_token=next_token
        )
