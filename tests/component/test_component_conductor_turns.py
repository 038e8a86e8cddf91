"""The Conductor over real sockets, with real Memory and Agent services, PostgreSQL and
Redis: turns with a named agent streamed and recorded in Memory, replayed for a
retried request_id, watched after a sequence, paused on an interrupt and resumed; every
session invisible to other tenants; bad input refused with its fields."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from agentmesh.core.server import RunningServer
from agentmesh.v1 import common_pb2, conductor_pb2, memory_pb2
from component.conductor_helpers import ConductorStub, converse, kinds, serve_conductor, text
from component.conftest import Backends, Metadata, credentials
from component.job_helpers import serve_agent
from component.memory_helpers import (
    Stub,
    error_info,
    expect_error,
    field_violations,
    uid,
    unique,
)


@pytest.fixture(scope="module")
async def agent_server(
    memory_server: RunningServer, backends: Backends
) -> AsyncIterator[RunningServer]:
    async with serve_agent(memory_server.port, backends.redis_url) as running:
        yield running


@pytest.fixture(scope="module")
async def conductor(
    backends: Backends, memory_server: RunningServer, agent_server: RunningServer
) -> AsyncIterator[ConductorStub]:
    async with serve_conductor(
        backends, memory_server.port, agent_server.port, AGENTMESH_CONDUCTOR_WATCH_POLL_S="0.5"
    ) as stub:
        yield stub


def _tenant() -> Metadata:
    return credentials(f"conv-{uid()}")


async def _messages(memory: Stub, session: str, tenant: Metadata) -> list[memory_pb2.Message]:
    response = await memory.ListMessages(
        memory_pb2.ListMessagesRequest(parent=session), metadata=tenant
    )
    return list(response.messages)


async def _conductor_decisions(
    memory: Stub, session: str, tenant: Metadata
) -> list[memory_pb2.Decision]:
    """The session's decisions the Conductor recorded (the Agent service records one
    per run too, in the background)."""
    response = await memory.ListDecisions(
        memory_pb2.ListDecisionsRequest(filter=f'session = "{session}"', page_size=100),
        metadata=tenant,
    )
    return [d for d in response.decisions if d.metadata.fields["by"].string_value == "conductor"]


def _output(events: list[conductor_pb2.ConverseEvent]) -> dict[str, object]:
    """The structured output of the agent's run (its relayed final event)."""
    for event in events:
        if event.agent_event.WhichOneof("event") == "final":
            return json_format.MessageToDict(event.agent_event.final.output)
    raise AssertionError(f"no agent final among {kinds(events)}")


async def test_an_explicit_turn_is_streamed_numbered_and_recorded_in_memory(
    conductor: ConductorStub, memory: Stub
) -> None:
    tenant = _tenant()
    session = f"sessions/{unique()}"
    events = await converse(
        conductor,
        tenant,
        session=session,
        create_session=True,
        agent="agents/echo",
        parts=text("hello there"),
    )
    assert kinds(events)[0] == "routing"
    assert kinds(events)[-1] == "final"
    assert "agent:final" in kinds(events)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert {e.session for e in events} == {session}
    assert len({e.turn_id for e in events}) == 1
    routing = events[0].routing
    assert routing.strategy == conductor_pb2.ROUTING_STRATEGY_EXPLICIT
    assert routing.agent == "agents/echo"
    assert routing.decision.startswith("decisions/")
    final = events[-1].final
    assert final.agent == "agents/echo"
    assert [p.text for p in final.parts] == ["hello there"]
    # Memory holds the user's message and the answer, in order, and the decision.
    stored = await _messages(memory, session, tenant)
    assert [(m.role, m.parts[0].text) for m in stored] == [
        (common_pb2.ROLE_USER, "hello there"),
        (common_pb2.ROLE_ASSISTANT, "hello there"),
    ]
    assert stored[1].name == final.message
    assert stored[1].agent == "agents/echo"
    decisions = await _conductor_decisions(memory, session, tenant)
    assert [d.name for d in decisions] == [routing.decision]
    assert decisions[0].chosen_action == "agents/echo"
    # The next turn continues the agent's thread of this session: sequences go on.
    again = await converse(
        conductor, tenant, session=session, agent="agents/echo", parts=text("twice")
    )
    assert again[0].sequence == events[-1].sequence + 1
    assert _output(again)["turns"] == 2


async def test_a_retried_request_id_replays_the_turn_without_running_it_again(
    conductor: ConductorStub, memory: Stub
) -> None:
    tenant = _tenant()
    session = f"sessions/{unique()}"
    request: dict[str, Any] = {
        "session": session,
        "create_session": True,
        "agent": "agents/echo",
        "parts": text("once only"),
        "request_id": f"req-{uid()}",
    }
    first = await converse(conductor, tenant, **request)
    replay = await converse(conductor, tenant, **request)
    assert replay == first
    # The agent ran once: one user and one assistant message, one routing decision; the
    # thread saw one turn, so the next one is its second.
    assert len(await _messages(memory, session, tenant)) == 2
    assert len(await _conductor_decisions(memory, session, tenant)) == 1
    following = await converse(
        conductor, tenant, session=session, agent="agents/echo", parts=text("next")
    )
    assert _output(following)["turns"] == 2
    # The same key for another message is refused, naming the field.
    violations = await field_violations(
        converse(conductor, tenant, **{**request, "parts": text("something else")})
    )
    assert "request_id" in violations


async def test_watch_replays_after_a_sequence_then_streams_live_turns(
    conductor: ConductorStub,
) -> None:
    tenant = _tenant()
    session = f"sessions/{unique()}"
    first = await converse(
        conductor,
        tenant,
        session=session,
        create_session=True,
        agent="agents/echo",
        parts=text("one"),
    )
    latest = first[-1].sequence
    watch = conductor.WatchConversation(
        conductor_pb2.WatchConversationRequest(session=session, after_sequence=2),
        metadata=tenant,
    )
    async with asyncio.timeout(60):
        missed = [await watch.read() for _ in range(latest - 2)]
        assert missed == first[2:]
        second = await converse(
            conductor, tenant, session=session, agent="agents/echo", parts=text("two")
        )
        live = [await watch.read() for _ in second]
    watch.cancel()
    assert live == second
    # Beyond the latest sequence: OUT_OF_RANGE.
    beyond = conductor.WatchConversation(
        conductor_pb2.WatchConversationRequest(session=session, after_sequence=10_000),
        metadata=tenant,
    )
    error = await expect_error(beyond.read(), grpc.StatusCode.OUT_OF_RANGE)
    assert "after_sequence" in (error.details() or "")


async def test_an_interrupt_pauses_the_session_until_the_resume_answers_it(
    conductor: ConductorStub, memory: Stub
) -> None:
    tenant = _tenant()
    session = f"sessions/{unique()}"
    action = struct_pb2.Struct()
    action.update({"action": "refund order 1234"})
    paused = await converse(
        conductor,
        tenant,
        session=session,
        create_session=True,
        agent="agents/approval",
        parts=text("please refund order 1234"),
        input=action,
    )
    assert kinds(paused)[-1] == "interrupt"
    interrupt = paused[-1].interrupt
    assert interrupt.id
    # A plain message while the turn waits: FAILED_PRECONDITION, nothing stored.
    refused = await expect_error(
        converse(conductor, tenant, session=session, agent="agents/echo", parts=text("hi")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_info(refused).reason == "TURN_PAUSED"
    wrong = await expect_error(
        converse(
            conductor,
            tenant,
            session=session,
            resume=common_pb2.ResumeInput(
                interrupt_id="not-it", answer=struct_pb2.Value(string_value="yes")
            ),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_info(wrong).reason == "INTERRUPT_MISMATCH"
    resumed = await converse(
        conductor,
        tenant,
        session=session,
        resume=common_pb2.ResumeInput(
            interrupt_id=interrupt.id, answer=struct_pb2.Value(string_value="yes")
        ),
    )
    assert kinds(resumed)[0] == "routing"
    assert kinds(resumed)[-1] == "final"
    assert resumed[0].sequence == paused[-1].sequence + 1
    assert resumed[0].turn_id != paused[0].turn_id
    assert [p.text for p in resumed[-1].final.parts] == ["Approved: refund order 1234. Done."]
    stored = await _messages(memory, session, tenant)
    assert [m.role for m in stored] == [common_pb2.ROLE_USER, common_pb2.ROLE_ASSISTANT]
    # Nothing waits any more: a resume now has no paused turn.
    none = await expect_error(
        converse(
            conductor,
            tenant,
            session=session,
            resume=common_pb2.ResumeInput(
                interrupt_id=interrupt.id, answer=struct_pb2.Value(string_value="yes")
            ),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_info(none).reason == "NO_PAUSED_TURN"


async def test_another_tenants_session_is_not_found(conductor: ConductorStub, memory: Stub) -> None:
    owner, other = _tenant(), _tenant()
    session = f"sessions/{unique()}"
    await converse(
        conductor,
        owner,
        session=session,
        create_session=True,
        agent="agents/echo",
        parts=text("mine"),
    )
    await expect_error(
        converse(conductor, other, session=session, agent="agents/echo", parts=text("yours?")),
        grpc.StatusCode.NOT_FOUND,
    )
    watch = conductor.WatchConversation(
        conductor_pb2.WatchConversationRequest(session=session), metadata=other
    )
    await expect_error(watch.read(), grpc.StatusCode.NOT_FOUND)
    # A missing session without create_session, and an unknown agent: NOT_FOUND too.
    await expect_error(
        converse(
            conductor, owner, session=f"sessions/{unique()}", agent="agents/echo", parts=text("x")
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        converse(conductor, owner, session=session, agent="agents/nobody", parts=text("x")),
        grpc.StatusCode.NOT_FOUND,
    )
    assert len(await _messages(memory, session, owner)) == 2


async def test_bad_input_is_refused_naming_every_field(conductor: ConductorStub) -> None:
    tenant = _tenant()
    violations = await field_violations(
        converse(
            conductor,
            tenant,
            session="chats/x",
            agent="robots/y",
            request_id="bad\x00id",
            parts=[common_pb2.Part()],
        )
    )
    assert {"session", "agent", "request_id", "parts[0]"} <= set(violations)
    violations = await field_violations(
        converse(
            conductor,
            tenant,
            session=f"sessions/{unique()}",
            parts=text("both"),
            resume=common_pb2.ResumeInput(),
        )
    )
    assert {"parts", "resume.interrupt_id", "resume.answer"} <= set(violations)
    # The agent's input schema is checked before anything runs.
    session = f"sessions/{unique()}"
    violations = await field_violations(
        converse(
            conductor,
            tenant,
            session=session,
            create_session=True,
            agent="agents/approval",
            parts=text("no action given"),
        )
    )
    assert any(field.startswith("input") for field in violations)
    watch = conductor.WatchConversation(
        conductor_pb2.WatchConversationRequest(session="nope", after_sequence=-1),
        metadata=tenant,
    )
    error = await expect_error(watch.read(), grpc.StatusCode.INVALID_ARGUMENT)
    assert error.details()
    # No agent named and no default agent configured: FAILED_PRECONDITION.
    no_route = await expect_error(
        converse(conductor, tenant, session=session, parts=text("anyone?")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_info(no_route).reason == "NO_ROUTE"
