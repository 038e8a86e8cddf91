"""MemoryService message history over real gRPC: append and list."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from typing import Any, cast

import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2

from agentmesh.core.paging import Keyset, encode_page_token
from agentmesh.v1 import common_pb2, memory_pb2

# `component.conftest`, not `conftest`: the name mypy resolves too (mypy_path has tests/).
from component.conftest import Metadata
from component.memory_helpers import Stub, expect_error, expect_invalid, unique

# ------------------------------------------------------------------ helpers


async def new_session(memory: Stub, auth: Metadata) -> str:
    session = await memory.CreateSession(
        memory_pb2.CreateSessionRequest(session=memory_pb2.Session(), session_id=unique("m")),
        metadata=auth,
    )
    return session.name


def text(content: str, **fields: Any) -> memory_pb2.Message:
    fields.setdefault("role", common_pb2.ROLE_USER)
    return memory_pb2.Message(parts=[common_pb2.Part(text=content)], **fields)


async def append(
    memory: Stub, auth: Metadata, parent: str, *messages: memory_pb2.Message, request_id: str = ""
) -> list[memory_pb2.Message]:
    response = await memory.AppendMessages(
        memory_pb2.AppendMessagesRequest(
            parent=parent, messages=list(messages), request_id=request_id
        ),
        metadata=auth,
    )
    return list(response.messages)


async def list_all(
    memory: Stub, auth: Metadata, parent: str, page_size: int, **fields: Any
) -> list[memory_pb2.Message]:
    """Walks every page of a listing."""
    messages: list[memory_pb2.Message] = []
    token = ""
    for _ in range(1000):
        page = await memory.ListMessages(
            memory_pb2.ListMessagesRequest(
                parent=parent, page_size=page_size, page_token=token, **fields
            ),
            metadata=auth,
        )
        assert len(page.messages) <= page_size
        messages.extend(page.messages)
        token = page.next_page_token
        if not token:
            return messages
    raise AssertionError("pagination did not end")


async def stored_rows(db: asyncpg.Pool, parent: str) -> list[tuple[int, str]]:
    rows = await db.fetch(
        "SELECT sequence, message_id FROM memory.messages WHERE session_id = $1 ORDER BY 1",
        parent.removeprefix("sessions/"),
    )
    return [(row["sequence"], row["message_id"]) for row in rows]


async def get_session(memory: Stub, auth: Metadata, name: str) -> memory_pb2.Session:
    return await memory.GetSession(memory_pb2.GetSessionRequest(name=name), metadata=auth)


# ------------------------------------------------------------------ append


async def test_append_stores_every_kind_of_part_in_order(memory: Stub, tenant_a: Metadata) -> None:
    parent = await new_session(memory, tenant_a)
    data = struct_pb2.Struct()
    data.update({"answer": 42, "items": [1, "two", None], "ok": True})
    metadata = struct_pb2.Struct()
    metadata.update({"model": "small"})
    sent = [
        text("What is my balance?"),
        memory_pb2.Message(
            role=common_pb2.ROLE_ASSISTANT,
            parts=[
                common_pb2.Part(text="Let me check.", media_type="text/markdown"),
                common_pb2.Part(data=data),
            ],
            agent="agents/billing",
            tool_call_id="call_1",
            token_count=17,
            metadata=metadata,
        ),
        memory_pb2.Message(
            role=common_pb2.ROLE_TOOL,
            parts=[
                common_pb2.Part(blob=b"\x00\x01\xff", media_type="image/png"),
                common_pb2.Part(uri="artifacts/receipt"),
                common_pb2.Part(text=""),
            ],
            tool_call_id="call_1",
        ),
        memory_pb2.Message(role=common_pb2.ROLE_SYSTEM, parts=[common_pb2.Part(text="Be kind")]),
    ]
    stored = await append(memory, tenant_a, parent, *sent)
    assert [m.sequence for m in stored] == [1, 2, 3, 4]
    for original, message in zip(sent, stored, strict=True):
        assert message.message_id
        assert message.name == f"{parent}/messages/{message.message_id}"
        assert message.HasField("create_time")
        assert (message.role, list(message.parts)) == (original.role, list(original.parts))
        assert (message.agent, message.tool_call_id) == (original.agent, original.tool_call_id)
        assert (message.token_count, message.metadata) == (original.token_count, original.metadata)
    assert await list_all(memory, tenant_a, parent, page_size=10) == stored
    session = await get_session(memory, tenant_a, parent)
    assert (session.message_count, session.last_sequence) == (4, 4)
    assert session.update_time.ToMicroseconds() > session.create_time.ToMicroseconds()


async def test_append_continues_the_sequence_across_calls(memory: Stub, tenant_a: Metadata) -> None:
    parent = await new_session(memory, tenant_a)
    first = await append(memory, tenant_a, parent, text("a"), text("b"))
    second = await append(memory, tenant_a, parent, text("c"))
    assert [m.sequence for m in first + second] == [1, 2, 3]


async def test_the_same_message_id_is_stored_once(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    parent = await new_session(memory, tenant_a)
    (first,) = await append(memory, tenant_a, parent, text("hi", message_id="greeting"))
    # A retry (even with other content) returns the stored message, appends nothing.
    (again,) = await append(memory, tenant_a, parent, text("changed", message_id="greeting"))
    assert again == first
    # Within one batch: a known id, a new id twice, and one without id.
    batch = await append(
        memory,
        tenant_a,
        parent,
        text("x", message_id="greeting"),
        text("y", message_id="second"),
        text("y again", message_id="second"),
        text("z"),
    )
    assert batch[0] == first
    assert batch[1] == batch[2]
    assert [m.sequence for m in batch] == [1, 2, 2, 3]
    assert [seq for seq, _ in await stored_rows(db, parent)] == [1, 2, 3]
    session = await get_session(memory, tenant_a, parent)
    assert (session.message_count, session.last_sequence) == (3, 3)


async def test_the_same_request_id_appends_once(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    parent = await new_session(memory, tenant_a)
    request_id = str(uuid.uuid4())
    first, second = await asyncio.gather(
        append(memory, tenant_a, parent, text("a"), text("b"), request_id=request_id),
        append(memory, tenant_a, parent, text("a"), text("b"), request_id=request_id),
    )
    third = await append(memory, tenant_a, parent, text("a"), text("b"), request_id=request_id)
    assert first == second == third
    assert len(await stored_rows(db, parent)) == 2


async def test_a_request_id_reused_for_other_messages_is_invalid(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    parent = await new_session(memory, tenant_a)
    request_id = str(uuid.uuid4())
    first = await append(memory, tenant_a, parent, text("a"), request_id=request_id)
    await expect_invalid(
        append(memory, tenant_a, parent, text("b"), request_id=request_id), "request_id"
    )
    other_parent = await new_session(memory, tenant_a)
    await expect_invalid(
        append(memory, tenant_a, other_parent, text("a"), request_id=request_id), "request_id"
    )
    assert await append(memory, tenant_a, parent, text("a"), request_id=request_id) == first
    assert len(await stored_rows(db, parent)) == 1
    assert await stored_rows(db, other_parent) == []


async def test_concurrent_appends_get_gapless_unique_sequences(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    parent = await new_session(memory, tenant_a)
    batches = await asyncio.gather(
        *(
            append(memory, tenant_a, parent, *(text(f"{i}.{j}") for j in range(1 + i % 3)))
            for i in range(20)
        )
    )
    total = sum(1 + i % 3 for i in range(20))
    sequences = sorted(m.sequence for batch in batches for m in batch)
    assert sequences == list(range(1, total + 1))
    for batch in batches:  # each batch is contiguous and in request order
        numbers = [m.sequence for m in batch]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert [seq for seq, _ in await stored_rows(db, parent)] == list(range(1, total + 1))
    session = await get_session(memory, tenant_a, parent)
    assert (session.message_count, session.last_sequence) == (total, total)


def _bad(**fields: Any) -> memory_pb2.Message:
    return memory_pb2.Message(**fields)


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([], "messages"),
        ([text(str(i)) for i in range(101)], "messages"),
        ([text("ok"), text("x", role=common_pb2.ROLE_UNSPECIFIED)], "messages[1].role"),
        ([text("x", role=cast(common_pb2.Role.ValueType, 99))], "messages[0].role"),
        ([_bad(role=common_pb2.ROLE_USER)], "messages[0].parts"),
        ([_bad(role=common_pb2.ROLE_USER, parts=[common_pb2.Part()])], "messages[0].parts[0]"),
        (
            [
                _bad(
                    role=common_pb2.ROLE_USER,
                    parts=[common_pb2.Part(text="ok"), common_pb2.Part(media_type="text/plain")],
                )
            ],
            "messages[0].parts[1]",
        ),
        ([text("x", message_id="Not Valid")], "messages[0].message_id"),
        ([text("x", agent="billing")], "messages[0].agent"),
        ([text("x", token_count=-1)], "messages[0].token_count"),
        (
            [
                text(
                    "x",
                    metadata=struct_pb2.Struct(
                        fields={"b": struct_pb2.Value(string_value="x" * 16_384)}
                    ),
                )
            ],
            "messages[0].metadata",
        ),
        (
            [
                _bad(
                    role=common_pb2.ROLE_USER,
                    parts=[
                        common_pb2.Part(
                            data=struct_pb2.Struct(
                                fields={"n": struct_pb2.Value(number_value=float("inf"))}
                            )
                        )
                    ],
                )
            ],
            "messages[0].parts[0].data",
        ),
    ],
)
async def test_a_bad_batch_is_invalid_and_appends_nothing(
    memory: Stub,
    tenant_a: Metadata,
    db: asyncpg.Pool,
    messages: list[memory_pb2.Message],
    field: str,
) -> None:
    parent = await new_session(memory, tenant_a)
    await append(memory, tenant_a, parent, text("before"))
    await expect_invalid(
        memory.AppendMessages(
            memory_pb2.AppendMessagesRequest(parent=parent, messages=messages), metadata=tenant_a
        ),
        field,
    )
    assert await stored_rows(db, parent) == [(1, (await stored_rows(db, parent))[0][1])]
    session = await get_session(memory, tenant_a, parent)
    assert (session.message_count, session.last_sequence) == (1, 1)


async def test_a_bad_batch_names_every_bad_message(memory: Stub, tenant_a: Metadata) -> None:
    parent = await new_session(memory, tenant_a)
    request = memory_pb2.AppendMessagesRequest(
        parent=parent,
        messages=[text("ok"), _bad(role=common_pb2.ROLE_USER), text("x", message_id="BAD")],
        request_id="r" * 200,
    )
    await expect_invalid(
        memory.AppendMessages(request, metadata=tenant_a),
        "messages[1].parts",
        "messages[2].message_id",
        "request_id",
    )


@pytest.mark.parametrize("parent", ["", "sessions/UPPER", "session/x", "sessions/a/messages"])
async def test_malformed_parents_are_invalid(memory: Stub, tenant_a: Metadata, parent: str) -> None:
    await expect_invalid(
        memory.AppendMessages(
            memory_pb2.AppendMessagesRequest(parent=parent, messages=[text("x")]),
            metadata=tenant_a,
        ),
        "parent",
    )
    await expect_invalid(
        memory.ListMessages(memory_pb2.ListMessagesRequest(parent=parent), metadata=tenant_a),
        "parent",
    )


async def test_an_unknown_session_is_not_found(memory: Stub, tenant_a: Metadata) -> None:
    parent = f"sessions/unknown-{uuid.uuid4().hex[:8]}"
    await expect_error(
        memory.AppendMessages(
            memory_pb2.AppendMessagesRequest(parent=parent, messages=[text("x")]),
            metadata=tenant_a,
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        memory.ListMessages(memory_pb2.ListMessagesRequest(parent=parent), metadata=tenant_a),
        grpc.StatusCode.NOT_FOUND,
    )


# ------------------------------------------------------------------ list


async def test_list_pages_in_sequence_order_both_ways(memory: Stub, tenant_a: Metadata) -> None:
    parent = await new_session(memory, tenant_a)
    stored = await append(memory, tenant_a, parent, *(text(str(i)) for i in range(25)))
    assert await list_all(memory, tenant_a, parent, page_size=10) == stored
    assert await list_all(memory, tenant_a, parent, page_size=7, descending=True) == list(
        reversed(stored)
    )
    tail = await list_all(memory, tenant_a, parent, page_size=4, after_sequence=20)
    assert [m.sequence for m in tail] == [21, 22, 23, 24, 25]
    tail_down = await list_all(
        memory, tenant_a, parent, page_size=2, after_sequence=20, descending=True
    )
    assert [m.sequence for m in tail_down] == [25, 24, 23, 22, 21]
    default = await memory.ListMessages(
        memory_pb2.ListMessagesRequest(parent=parent), metadata=tenant_a
    )
    assert list(default.messages) == stored
    assert not default.next_page_token


async def test_list_filters_on_a_time_range(memory: Stub, tenant_a: Metadata) -> None:
    parent = await new_session(memory, tenant_a)
    early = await append(memory, tenant_a, parent, text("a"), text("b"))
    late = await append(memory, tenant_a, parent, text("c"))
    boundary = late[0].create_time
    assert await list_all(memory, tenant_a, parent, page_size=1, start_time=boundary) == late
    assert await list_all(memory, tenant_a, parent, page_size=1, end_time=boundary) == early
    before = timestamp_pb2.Timestamp(seconds=boundary.seconds - 3600)
    assert (
        await list_all(memory, tenant_a, parent, page_size=5, start_time=before, end_time=boundary)
        == early
    )


async def test_list_rejects_bad_ranges_and_page_tokens(memory: Stub, tenant_a: Metadata) -> None:
    parent = await new_session(memory, tenant_a)
    await append(memory, tenant_a, parent, *(text(str(i)) for i in range(3)))

    def request(**fields: Any) -> Awaitable[memory_pb2.ListMessagesResponse]:
        return memory.ListMessages(
            memory_pb2.ListMessagesRequest(parent=parent, **fields), metadata=tenant_a
        )

    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    await expect_invalid(request(start_time=now, end_time=now), "end_time")
    await expect_invalid(request(after_sequence=-1), "after_sequence")
    await expect_invalid(request(page_size=-5), "page_size")
    await expect_invalid(request(start_time=timestamp_pb2.Timestamp(seconds=10**12)), "start_time")
    page = await request(page_size=1)
    assert page.next_page_token
    # A token from one order or range is refused by another.
    await expect_invalid(
        request(page_size=1, page_token=page.next_page_token, descending=True), "page_token"
    )
    await expect_invalid(
        request(page_size=1, page_token=page.next_page_token, after_sequence=1), "page_token"
    )
    for forged in ["%%%", "eyJwIjp7InNlcSI6LTF9LCJxIjoiMCJ9", page.next_page_token + "x"]:
        await expect_invalid(request(page_token=forged), "page_token")
    # Tokens are not signed: crafted for the right query, a bad position is refused.
    query = {"start": "", "end": "", "after": "0", "desc": "False"}
    assert Keyset(int).encode([1], query) == page.next_page_token  # same query
    # Positions of the earlier token format, and ill-typed ones of the current format.
    positions: list[Any] = [{}, {"seq": "1"}, {"seq": -1}, {"seq": 2**63}, {"seq": True}]
    positions += [[], ["1"], [2**63], [True], [1, 2], [1.5]]
    for position in positions:
        await expect_invalid(request(page_token=encode_page_token(position, query)), "page_token")


# ------------------------------------------------------------------ tenants


async def test_another_tenant_cannot_read_or_append(
    memory: Stub, tenant_a: Metadata, tenant_b: Metadata, db: asyncpg.Pool
) -> None:
    parent = await new_session(memory, tenant_a)
    stored = await append(memory, tenant_a, parent, text("secret"))
    await expect_error(
        memory.AppendMessages(
            memory_pb2.AppendMessagesRequest(parent=parent, messages=[text("intrusion")]),
            metadata=tenant_b,
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        memory.ListMessages(memory_pb2.ListMessagesRequest(parent=parent), metadata=tenant_b),
        grpc.StatusCode.NOT_FOUND,
    )
    # Same message id from tenant b, into b's own session of the same id: no crosstalk.
    await memory.CreateSession(
        memory_pb2.CreateSessionRequest(
            session=memory_pb2.Session(), session_id=parent.removeprefix("sessions/")
        ),
        metadata=tenant_b,
    )
    (theirs,) = await append(memory, tenant_b, parent, text("b's", message_id=stored[0].message_id))
    assert theirs.parts[0].text == "b's"
    assert await list_all(memory, tenant_a, parent, page_size=10) == stored
    count = await db.fetchval(
        "SELECT count(*) FROM memory.messages WHERE tenant = 'tenant-a' AND session_id = $1",
        parent.removeprefix("sessions/"),
    )
    assert count == 1
