"""Hand-offs within a turn over real sockets (a real Agent process serving the test
agents, real Memory, PostgreSQL and Redis): an agent whose run ends on a hand-off
passes the turn to the agent it names; every hand-off is a routing event and a
decision; the turn's reply is every agent's answer, stored as one message; hand-offs
stop at the Conductor's limit; a hand-off to an agent nobody serves leaves the answer
as it is; a retried turn replays; another tenant sees none of it."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from agentmesh.core.server import RunningServer
from agentmesh.v1 import common_pb2, conductor_pb2, memory_pb2
from component.agent_helpers import agent_process
from component.conductor_helpers import ConductorStub, converse, kinds, serve_conductor, text
from component.conftest import Backends, Metadata, credentials
from component.memory_helpers import Stub, expect_error, free_port, uid


@pytest.fixture(scope="module")
async def conductor(
    backends: Backends, memory_server: RunningServer
) -> AsyncIterator[ConductorStub]:
    work = Path(tempfile.mkdtemp(prefix="agentmesh-handoffs-"))
    port = free_port()
    async with (
        agent_process(memory_server.port, work, "agent-handoffs", port=port),
        serve_conductor(
            backends,
            memory_server.port,
            port,
            AGENTMESH_CONDUCTOR_WATCH_POLL_S="0.5",
            AGENTMESH_CONDUCTOR_MAX_HANDOFFS="2",
        ) as stub,
    ):
        yield stub


def _tenant() -> Metadata:
    return credentials(f"handoff-{uid()}")


def _routings(events: list[conductor_pb2.ConverseEvent]) -> list[conductor_pb2.RoutingDecision]:
    return [e.routing for e in events if e.WhichOneof("event") == "routing"]


def _final(events: list[conductor_pb2.ConverseEvent]) -> conductor_pb2.FinalMessage:
    assert events[-1].WhichOneof("event") == "final", kinds(events)
    return events[-1].final


async def _decisions(memory: Stub, session: str, tenant: Metadata) -> list[memory_pb2.Decision]:
    response = await memory.ListDecisions(
        memory_pb2.ListDecisionsRequest(filter=f'session = "{session}"', page_size=100),
        metadata=tenant,
    )
    found = [d for d in response.decisions if d.metadata.fields["by"].string_value == "conductor"]
    return sorted(found, key=lambda d: d.create_time.ToNanoseconds())


async def test_an_agent_hands_the_turn_to_another_and_the_reply_is_both_answers(
    conductor: ConductorStub, memory: Stub
) -> None:
    tenant, session = _tenant(), f"s-{uid()}"
    events = await converse(
        conductor,
        tenant,
        session=f"sessions/{session}",
        create_session=True,
        agent="agents/triage-test",
        parts=text("my invoice is wrong"),
        request_id=f"r-{uid()}",
    )
    routings = _routings(events)
    assert [(r.strategy, r.agent) for r in routings] == [
        (conductor_pb2.ROUTING_STRATEGY_EXPLICIT, "agents/triage-test"),
        (conductor_pb2.ROUTING_STRATEGY_HANDOFF, "agents/billing-test"),
    ]
    assert routings[1].reason == "its field"
    # The hand-off is relayed as the triage run's event, before billing's routing.
    handoff_at = next(
        i for i, e in enumerate(events) if e.agent_event.WhichOneof("event") == "handoff"
    )
    handoff = events[handoff_at].agent_event.handoff
    assert (handoff.from_agent, handoff.to_agent) == ("agents/triage-test", "agents/billing-test")
    assert handoff_at < [e.WhichOneof("event") for e in events].index("routing", 1)
    final = _final(events)
    assert list(final.agents) == ["agents/triage-test", "agents/billing-test"]
    assert final.agent == "agents/billing-test"
    texts = [p.text for p in final.parts]
    assert texts[0] == "triage-test: passing to billing-test."
    # Billing got the user's message and the note of who handed over and why.
    assert texts[1].startswith("billing-test: took ")
    assert "agents/triage-test handed this message over to you" in texts[1]
    assert "its field" in texts[1]
    assert [e.sequence for e in events] == list(
        range(events[0].sequence, events[0].sequence + len(events))
    )

    name = f"sessions/{session}"
    stored = await memory.ListMessages(memory_pb2.ListMessagesRequest(parent=name), metadata=tenant)
    answers = [m for m in stored.messages if m.agent]
    assert len(answers) == 1
    assert answers[0].name == final.message
    assert answers[0].agent == "agents/billing-test"
    assert [p.text for p in answers[0].parts] == texts

    decisions = await _decisions(memory, name, tenant)
    assert [(d.chosen_action, d.outcome) for d in decisions] == [
        ("agents/triage-test", "routed"),
        ("agents/billing-test", "handed over"),
    ]
    assert decisions[1].metadata.fields["from_agent"].string_value == "agents/triage-test"
    assert [d.name for d in decisions] == [r.decision for r in routings]

    # Another tenant sees neither the session's decisions nor its messages.
    other = _tenant()
    others = await memory.ListDecisions(
        memory_pb2.ListDecisionsRequest(filter=f'session = "{name}"', page_size=100),
        metadata=other,
    )
    assert list(others.decisions) == []
    await expect_error(
        memory.ListMessages(memory_pb2.ListMessagesRequest(parent=name), metadata=other),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_a_retried_handed_off_turn_replays_without_running_again(
    conductor: ConductorStub, memory: Stub
) -> None:
    tenant, session, request_id = _tenant(), f"s-{uid()}", f"r-{uid()}"
    fields: dict[str, Any] = {
        "session": f"sessions/{session}",
        "create_session": True,
        "agent": "agents/triage-test",
        "parts": text("refund please"),
        "request_id": request_id,
    }
    first = await converse(conductor, tenant, **fields)
    again = await converse(conductor, tenant, **fields)
    assert again == first
    decisions = await _decisions(memory, f"sessions/{session}", tenant)
    assert len(decisions) == 2


async def test_hand_offs_stop_at_the_limit_with_the_answers_so_far(
    conductor: ConductorStub,
) -> None:
    events = await converse(
        conductor,
        _tenant(),
        session=f"sessions/s-{uid()}",
        create_session=True,
        agent="agents/ping-test",
        parts=text("loop"),
    )
    handoffs = [
        r for r in _routings(events) if r.strategy == conductor_pb2.ROUTING_STRATEGY_HANDOFF
    ]
    assert [r.agent for r in handoffs] == ["agents/pong-test", "agents/ping-test"]
    final = _final(events)
    assert list(final.agents) == ["agents/ping-test", "agents/pong-test", "agents/ping-test"]
    assert [p.text for p in final.parts] == [
        "ping-test: passing to pong-test.",
        "pong-test: passing to ping-test.",
        "ping-test: passing to pong-test.",
    ]


async def test_a_handoff_to_an_agent_nobody_serves_leaves_the_answer(
    conductor: ConductorStub,
) -> None:
    events = await converse(
        conductor,
        _tenant(),
        session=f"sessions/s-{uid()}",
        create_session=True,
        agent="agents/stray-test",
        parts=text("hello"),
    )
    assert len(_routings(events)) == 1
    final = _final(events)
    assert list(final.agents) == ["agents/stray-test"]
    assert [p.text for p in final.parts] == ["stray-test: passing to absent-test."]


async def test_an_agents_own_handoffs_inside_its_graph_are_not_the_turns(
    conductor: ConductorStub,
) -> None:
    """langgraph-swarm's agents hand off inside one graph: the run goes on after the
    hand-off, so the turn stays with the agent that ran."""
    events = await converse(
        conductor,
        _tenant(),
        session=f"sessions/s-{uid()}",
        create_session=True,
        agent="agents/handoff-test",
        parts=text("who answers?"),
    )
    assert any(e.agent_event.WhichOneof("event") == "handoff" for e in events)
    assert len(_routings(events)) == 1
    assert list(_final(events).agents) == ["agents/handoff-test"]


async def test_a_turn_handed_to_an_agent_that_pauses_keeps_the_earlier_answer(
    conductor: ConductorStub, memory: Stub
) -> None:
    tenant, session = _tenant(), f"s-{uid()}"
    name = f"sessions/{session}"
    events = await converse(
        conductor,
        tenant,
        session=name,
        create_session=True,
        agent="agents/doorman-test",
        parts=text("let me in"),
    )
    assert events[-1].WhichOneof("event") == "interrupt", kinds(events)
    assert [r.agent for r in _routings(events)] == ["agents/doorman-test", "agents/gatekeeper-test"]
    stored = await memory.ListMessages(memory_pb2.ListMessagesRequest(parent=name), metadata=tenant)
    kept = [m for m in stored.messages if m.agent]
    assert [(m.agent, [p.text for p in m.parts]) for m in kept] == [
        ("agents/doorman-test", ["doorman-test: passing to gatekeeper-test."])
    ]
    # The resume continues the agent that paused, on its own thread.
    resumed = await converse(
        conductor,
        tenant,
        session=name,
        resume=common_pb2.ResumeInput(
            interrupt_id=events[-1].interrupt.id, answer=struct_pb2.Value(string_value="yes")
        ),
    )
    final = _final(resumed)
    assert list(final.agents) == ["agents/gatekeeper-test"]
    assert [p.text for p in final.parts] == ["gatekeeper-test: yes"]
