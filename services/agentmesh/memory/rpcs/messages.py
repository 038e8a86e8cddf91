"""MemoryService RPCs: Message history: append and list.

How an append numbers its messages is ``domain/messages.py``; the transaction that
does it, under the session's row lock, is ``stores/messages.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]
from google.protobuf import json_format, timestamp_pb2

from agentmesh.core.contract import ServicerContext
from agentmesh.core.errors import NotFound
from agentmesh.core.names import AGENTS, SESSIONS, validate_id
from agentmesh.core.offload import convert_sized
from agentmesh.core.paging import Keyset, page_size
from agentmesh.core.sql import item_bytes
from agentmesh.core.validation import NUL, NUL_RULE, Violations, validate_request_id
from agentmesh.memory import convert
from agentmesh.memory.rpc import RpcGroup, listing
from agentmesh.memory.stores.messages import Appended, NewMessage, append_messages, list_messages
from agentmesh.memory.stores.sessions import session_is_live
from agentmesh.v1 import common_pb2, memory_pb2

MAX_MESSAGES_PER_APPEND: Final = 100
MAX_MESSAGE_METADATA_BYTES: Final = 16 * 1024
DEFAULT_PAGE_SIZE: Final = 100
PAGE: Final = Keyset(int)
"""ListMessages pages by sequence (ascending or descending)."""

_ROLE_TO_DB: Final = {
    common_pb2.ROLE_USER: "user",
    common_pb2.ROLE_ASSISTANT: "assistant",
    common_pb2.ROLE_TOOL: "tool",
    common_pb2.ROLE_SYSTEM: "system",
}
_ROLE_FROM_DB: Final = {text: role for role, text in _ROLE_TO_DB.items()}


def message_name(session_id: str, message_id: str) -> str:
    return f"{SESSIONS.format(session_id)}/messages/{message_id}"


def message_proto(row: asyncpg.Record) -> memory_pb2.Message:
    """A ``memory.messages`` row (``stores.messages.COLUMNS``) as the wire Message."""
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


def _appended_proto(
    session_id: str, message: memory_pb2.Message, appended: Appended
) -> memory_pb2.Message:
    """A message as this append stored it: the request's, with what storage gave it
    (the same as reading it back would return)."""
    stored = memory_pb2.Message()
    stored.CopyFrom(message)
    stored.message_id = appended.message_id
    stored.name = message_name(session_id, appended.message_id)
    stored.sequence = appended.sequence
    stored.create_time.FromDatetime(appended.create_time)
    if not stored.metadata.fields:  # as read back: no metadata, not an empty one
        stored.ClearField("metadata")
    return stored


# ------------------------------------------------------------------ append validation


def _parts_json(parts: Any, violations: Violations, *, field: str) -> str:
    if not parts:
        violations.add(field, "at least one part is required")
    encoded: list[Any] = []
    for j, part in enumerate(parts):
        kind = part.WhichOneof("kind")
        if kind is None:
            violations.add(f"{field}[{j}]", "empty part: set one of text, data, blob or uri")
            continue
        if kind in ("text", "uri") and NUL in getattr(part, kind):
            violations.add(f"{field}[{j}].{kind}", NUL_RULE)
            continue
        try:
            encoded.append(json_format.MessageToDict(part, preserving_proto_field_name=True))
        except (ValueError, json_format.Error) as exc:  # NaN or infinity inside `data`
            violations.add(f"{field}[{j}].data", f"not representable as JSON: {exc}")
    return json.dumps(encoded, separators=(",", ":"))


def _validate_message(
    message: memory_pb2.Message, violations: Violations, *, field: str, max_bytes: int
) -> NewMessage | None:
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
        lambda: convert.struct_to_jsonb(
            message.metadata, field=f"{field}.metadata", max_bytes=MAX_MESSAGE_METADATA_BYTES
        )
    )
    if len(violations.items) > before or role is None or metadata_json is None:
        return None
    size = len(parts_json.encode()) + len(metadata_json.encode())
    if size > max_bytes:
        violations.add(field, f"{size} bytes as JSON (parts and metadata); at most {max_bytes}")
        return None
    return NewMessage(
        message_id=message.message_id,
        role=role,
        parts_json=parts_json,
        agent=message.agent,
        tool_call_id=message.tool_call_id,
        token_count=message.token_count,
        metadata_json=metadata_json,
    )


def _validate_append(
    request: memory_pb2.AppendMessagesRequest, *, max_bytes: int
) -> tuple[str, list[NewMessage]]:
    """Checks the whole batch before touching storage; every bad field is reported."""
    violations = Violations()
    session_id = violations.check(lambda: SESSIONS.parse(request.parent, field="parent"))
    violations.check(lambda: validate_request_id(request.request_id))
    count = len(request.messages)
    if not 1 <= count <= MAX_MESSAGES_PER_APPEND:
        violations.add("messages", f"1-{MAX_MESSAGES_PER_APPEND} messages per call, got {count}")
    incoming = [
        _validate_message(message, violations, field=f"messages[{i}]", max_bytes=max_bytes)
        for i, message in enumerate(request.messages)
    ]
    violations.raise_if_any()
    assert session_id is not None
    return session_id, [item for item in incoming if item is not None]


# ------------------------------------------------------------------ list validation


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


# ------------------------------------------------------------------ RPCs


class MessageRpcs(RpcGroup):
    """Message history: append and list."""

    async def AppendMessages(
        self, request: memory_pb2.AppendMessagesRequest, context: ServicerContext
    ) -> memory_pb2.AppendMessagesResponse:
        session_id, incoming = _validate_append(
            request, max_bytes=self.deps.settings.message_max_bytes
        )
        tenant = self.tenant()
        await self.deps.quotas.admit(
            tenant,
            "messages",
            rows=len(incoming),
            size=sum(len(m.parts_json) + len(m.metadata_json) for m in incoming),
        )
        async with self.deps.pool.acquire() as conn, conn.transaction():

            async def write() -> memory_pb2.AppendMessagesResponse:
                answers = await append_messages(conn, tenant, session_id, incoming)
                return memory_pb2.AppendMessagesResponse(
                    messages=[
                        _appended_proto(session_id, request.messages[answer.index], answer)
                        if isinstance(answer, Appended)
                        else message_proto(answer)
                        for answer in answers
                    ]
                )

            return await self.deps.request_ids.once(
                conn, tenant, "AppendMessages", request, memory_pb2.AppendMessagesResponse, write
            )

    @listing
    async def ListMessages(
        self, request: memory_pb2.ListMessagesRequest, context: ServicerContext
    ) -> memory_pb2.ListMessagesResponse:
        query = _validate_list(request)
        position = PAGE.decode(request.page_token, query.fingerprint)
        tenant = self.tenant()
        async with self.deps.pool.acquire() as conn:
            if not await session_is_live(conn, tenant, query.session_id):
                raise NotFound(SESSIONS.resource_type, request.parent)
            rows = await list_messages(
                conn,
                tenant,
                query.session_id,
                after_sequence=query.after_sequence,
                start=query.start,
                end=query.end,
                descending=query.descending,
                after=position[0] if position is not None else None,
                limit=query.size + 1,  # one extra row says whether another page exists
                budget=self.deps.process.page_max_bytes,
            )
        page, next_token = PAGE.page(
            rows,
            query.size,
            query.fingerprint,
            key=lambda row: (row["sequence"],),
            budget=self.deps.process.page_max_bytes,
            item_bytes=item_bytes,
        )
        messages = await convert_sized(
            lambda: [message_proto(row) for row in page], sum(map(item_bytes, page))
        )
        return memory_pb2.ListMessagesResponse(messages=messages, next_page_token=next_token)
