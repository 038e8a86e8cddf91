"""Hand-offs between agents as Handoff events, and subgraph updates that repeat their
history: the pure conversions of ``runtime.events``."""

from __future__ import annotations

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from agentmesh.agent.runtime.events import RunTrace, handoff_event, update_events
from agentmesh.v1 import agent_pb2


def _transfer(tool: str, text: str = "Successfully transferred", **kwargs: str) -> ToolMessage:
    return ToolMessage(content=text, name=tool, tool_call_id="call-1", **kwargs)


def _handoff(event: agent_pb2.AgentEvent | None) -> tuple[str, str, str]:
    assert event is not None
    assert event.WhichOneof("event") == "handoff"
    return (event.handoff.from_agent, event.handoff.to_agent, event.handoff.reason)


def test_a_transfer_tool_hands_off_from_the_node_to_the_agent_it_names() -> None:
    event = handoff_event("alice", _transfer("transfer_to_bob", "Successfully transferred to bob"))
    assert _handoff(event) == ("agents/alice", "agents/bob", "Successfully transferred to bob")


def test_the_caller_and_the_swarm_active_agent_name_the_agents_when_given() -> None:
    event = handoff_event(
        "tools",
        _transfer("transfer_to_flight_desk"),
        caller="hotel_desk",
        active_agent="Flight Desk",
    )
    assert _handoff(event)[:2] == ("agents/hotel_desk", "agents/Flight Desk")
    # An active_agent that names another agent does not override the tool's target.
    other = handoff_event("hotel", _transfer("transfer_to_flight"), active_agent="hotel")
    assert _handoff(other)[1] == "agents/flight"


def test_a_supervisors_agent_hands_back() -> None:
    event = handoff_event("math_expert", _transfer("transfer_back_to_supervisor"))
    assert _handoff(event)[:2] == ("agents/math_expert", "agents/supervisor")


def test_other_tools_and_failed_transfers_are_no_handoff() -> None:
    assert handoff_event("tools", _transfer("calculator")) is None
    assert handoff_event("tools", _transfer("transfer_to_")) is None
    assert handoff_event("tools", ToolMessage(content="x", tool_call_id="c")) is None
    assert handoff_event("alice", _transfer("transfer_to_bob", status="error")) is None


def test_a_subgraph_update_repeating_its_history_gives_each_event_once() -> None:
    """Swarm-style: alice calls transfer_to_bob; bob's update repeats alice's messages."""
    trace = RunTrace()
    human = HumanMessage(content="hi", id="h1")
    call = AIMessage(
        content="Alice: over to Bob",
        id="a1",
        tool_calls=[{"id": "call-1", "name": "transfer_to_bob", "args": {}}],
        usage_metadata={"input_tokens": 5, "output_tokens": 2, "total_tokens": 7},
    )
    result = ToolMessage(
        content="Successfully transferred to bob",
        name="transfer_to_bob",
        tool_call_id="call-1",
        id="t1",
    )
    answer = AIMessage(content="Bob: done", id="b1")
    events = [
        *update_events(
            "alice",
            {"messages": [human, call, result], "active_agent": "bob"},
            trace,
            whole_messages=True,
        ),
        *update_events(
            "bob",
            {"messages": [human, call, result, answer], "active_agent": "bob"},
            trace,
            whole_messages=True,
        ),
    ]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == [
        "message_delta",
        "tool_call",
        "tool_result",
        "handoff",
        "state_update",
        "message_delta",
        "state_update",
    ]
    assert [e.message_delta.text for e in events if e.HasField("message_delta")] == [
        "Alice: over to Bob",
        "Bob: done",
    ]
    assert events[3].handoff.from_agent == "agents/alice"
    assert events[3].handoff.to_agent == "agents/bob"
    assert trace.tools == ["transfer_to_bob"]
    assert trace.usage().total_tokens == 7  # counted once
    assert trace.reply == "Bob: done"


def test_messages_without_ids_are_all_converted() -> None:
    trace = RunTrace()
    for _ in range(2):
        update = {"messages": [AIMessage(content="x")]}
        events = list(update_events("m", update, trace, whole_messages=True))
        assert [e.WhichOneof("event") for e in events] == ["message_delta", "state_update"]


def test_a_tool_result_in_a_later_update_is_handed_off_by_its_caller() -> None:
    """A flat graph: the model node calls, the tools node answers in its own update."""
    call = {"id": "call-1", "name": "transfer_to_billing", "args": {}}
    for name, expected in (("triage", "agents/triage"), (None, "agents/front-desk")):
        trace = RunTrace(agent_id="front-desk")
        said = AIMessage(content="over", tool_calls=[call], id=f"a-{name}", name=name)
        list(update_events("model", {"messages": [said]}, trace, whole_messages=True))
        result = _transfer("transfer_to_billing", "invoice", id=f"t-{name}")
        events = list(update_events("tools", {"messages": [result]}, trace, whole_messages=True))
        handoff = next(e for e in events if e.HasField("handoff"))
        assert _handoff(handoff) == (expected, "agents/billing", "invoice")
