"""Hand-offs between agents over real gRPC: ``agents/handoff-test`` (from the test
agents' package, declared through its entry point) runs two agents as subgraphs,
and Alice hands the question to Bob through a ``transfer_to_bob`` tool returning
``Command(goto="bob", graph=Command.PARENT)``, as langgraph-swarm does. The stream
carries a Handoff event between Alice's message and Bob's, and each message once,
stateless and on a thread kept in the real Memory service."""

from __future__ import annotations

import pytest

from agentmesh.agent.settings import AgentSettings
from agentmesh.core.server import RunningServer
from agentmesh.v1 import agent_pb2, common_pb2
from component.agent_helpers import FIXTURES, drain, served_agent
from component.conftest import Metadata
from component.memory_helpers import uid


def _check_handoff(events: list[agent_pb2.AgentEvent]) -> None:
    kinds = [e.WhichOneof("event") for e in events]
    deltas = [i for i, kind in enumerate(kinds) if kind == "message_delta"]
    (handoff,) = [i for i, kind in enumerate(kinds) if kind == "handoff"]
    assert [events[i].message_delta.text for i in deltas] == [
        "Alice: 'who wrote Faust?' is for Bob.",
        "Bob: answered 'who wrote Faust?'.",
    ]
    assert deltas[0] < handoff < deltas[1], kinds
    assert events[handoff].handoff == agent_pb2.Handoff(
        from_agent="agents/alice",
        to_agent="agents/bob",
        reason="Successfully transferred to bob",
    )
    assert [e.tool_call.tool for e in events if e.HasField("tool_call")] == ["transfer_to_bob"]
    final = events[-1].final
    assert final.status == agent_pb2.RUN_STATUS_COMPLETED
    assert final.parts[0].text == "Bob: answered 'who wrote Faust?'."
    assert all(e.agent == "agents/handoff-test" for e in events)


async def test_a_stream_shows_the_handoff_between_the_two_agents_messages(
    monkeypatch: pytest.MonkeyPatch, memory_server: RunningServer, tenant_a: Metadata
) -> None:
    monkeypatch.syspath_prepend(str(FIXTURES))  # as if pip-installed: its entry points
    async with served_agent(AgentSettings(), memory_server.port) as stub:
        for thread in ("", f"handoff-{uid()}"):
            events = await drain(
                stub.StreamAgent(
                    agent_pb2.StreamAgentRequest(
                        name="agents/handoff-test",
                        thread_id=thread,
                        parts=[common_pb2.Part(text="who wrote Faust?")],
                    ),
                    metadata=tenant_a,
                    timeout=30,
                )
            )
            _check_handoff(events)
            assert events[-1].final.thread_id == thread


async def test_a_second_turn_on_the_thread_says_only_what_is_new(
    monkeypatch: pytest.MonkeyPatch, memory_server: RunningServer, tenant_a: Metadata
) -> None:
    # Bob stays the active agent (as in langgraph-swarm) and answers the second turn
    # himself. His subgraph hands back the whole conversation in its update; the first
    # turn's messages are in the thread already and are not streamed again.
    monkeypatch.syspath_prepend(str(FIXTURES))
    thread = f"handoff-{uid()}"
    async with served_agent(AgentSettings(), memory_server.port) as stub:
        turns = []
        for question in ("who wrote Faust?", "who wrote Hamlet?"):
            turns.append(
                await drain(
                    stub.StreamAgent(
                        agent_pb2.StreamAgentRequest(
                            name="agents/handoff-test",
                            thread_id=thread,
                            parts=[common_pb2.Part(text=question)],
                        ),
                        metadata=tenant_a,
                        timeout=30,
                    )
                )
            )
    _check_handoff(turns[0])
    second = [e.message_delta.text for e in turns[1] if e.HasField("message_delta")]
    assert second == ["Bob: answered 'who wrote Hamlet?'."]
    assert not any(e.HasField("handoff") or e.HasField("tool_call") for e in turns[1])
    assert turns[1][-1].final.parts[0].text == "Bob: answered 'who wrote Hamlet?'."
