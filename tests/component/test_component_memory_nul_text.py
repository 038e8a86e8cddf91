"""A NUL character (which PostgreSQL text and jsonb cannot hold) in any text a client
sends is INVALID_ARGUMENT naming that field, refused where the input enters: never
INTERNAL, never the database backstop (field ``request``), and nothing is stored."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from google.protobuf import struct_pb2

from agentmesh.v1 import common_pb2, memory_pb2
from component.conftest import Metadata
from component.memory_helpers import Stub, expect_invalid, uid

NUL = "a\x00b"


def _struct(value: str) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update({"note": value})
    return message


Call = Callable[[Stub, Metadata, str], Awaitable[Any]]


async def _session(memory: Stub, md: Metadata) -> str:
    created = await memory.CreateSession(memory_pb2.CreateSessionRequest(), metadata=md)
    return created.name


async def _append(memory: Stub, md: Metadata, text: str) -> Any:
    session = await _session(memory, md)
    message = memory_pb2.Message(role=common_pb2.ROLE_USER, parts=[common_pb2.Part(text=text)])
    return await memory.AppendMessages(
        memory_pb2.AppendMessagesRequest(parent=session, messages=[message]), metadata=md
    )


CASES: dict[str, tuple[Call, str]] = {
    "session display name": (
        lambda m, md, v: m.CreateSession(
            memory_pb2.CreateSessionRequest(session=memory_pb2.Session(display_name=v)),
            metadata=md,
        ),
        "session.display_name",
    ),
    "session metadata": (
        lambda m, md, v: m.CreateSession(
            memory_pb2.CreateSessionRequest(session=memory_pb2.Session(metadata=_struct(v))),
            metadata=md,
        ),
        "session.metadata",
    ),
    "message text": (_append, "messages[0].parts[0].text"),
    "memory content": (
        lambda m, md, v: m.CreateMemory(
            memory_pb2.CreateMemoryRequest(
                memory=memory_pb2.Memory(namespace=f"nul/{uid()}", content=v)
            ),
            metadata=md,
        ),
        "memory.content",
    ),
    "search text": (
        lambda m, md, v: m.SearchMemories(
            memory_pb2.SearchMemoriesRequest(text=v, namespace_prefix="nul"), metadata=md
        ),
        "text",
    ),
    "decision reasoning": (
        lambda m, md, v: m.CreateDecision(
            memory_pb2.CreateDecisionRequest(
                decision=memory_pb2.Decision(
                    agent="agents/echo", chosen_action="answer", reasoning=v
                )
            ),
            metadata=md,
        ),
        "decision.reasoning",
    ),
    "memory metadata": (
        lambda m, md, v: m.CreateMemory(
            memory_pb2.CreateMemoryRequest(
                memory=memory_pb2.Memory(
                    namespace=f"nul/{uid()}", content="fine", metadata=_struct(v)
                )
            ),
            metadata=md,
        ),
        "memory.metadata",
    ),
    "decision outcome": (
        lambda m, md, v: m.CreateDecision(
            memory_pb2.CreateDecisionRequest(
                decision=memory_pb2.Decision(agent="agents/echo", chosen_action="a", outcome=v)
            ),
            metadata=md,
        ),
        "decision.outcome",
    ),
    "checkpoint thread": (
        lambda m, md, v: m.GetCheckpoint(memory_pb2.GetCheckpointRequest(thread_id=v), metadata=md),
        "thread_id",
    ),
    "store key": (
        lambda m, md, v: m.GetStoreItem(
            memory_pb2.GetStoreItemRequest(namespace=["a"], key=v), metadata=md
        ),
        "key",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_a_nul_character_is_refused_where_it_enters(
    memory: Stub, tenant_a: Metadata, case: str
) -> None:
    call, field = CASES[case]
    await expect_invalid(call(memory, tenant_a, NUL), field)
