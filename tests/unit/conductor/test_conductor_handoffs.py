"""Hand-offs within a turn: the run's closing hand-off, the limit, the next agent's
note and the aggregated reply."""

from __future__ import annotations

from agentmesh.conductor.domain.handoffs import (
    MAX_CONTEXT_CHARS,
    HandoffWatch,
    aggregate,
    handoff_parts,
    handoff_target,
    may_hand_off,
    usage_sum,
)
from agentmesh.v1 import agent_pb2, common_pb2


def _handoff(to: str) -> agent_pb2.AgentEvent:
    return agent_pb2.AgentEvent(
        handoff=agent_pb2.Handoff(from_agent="agents/a", to_agent=to, reason="billing")
    )


def test_a_run_that_ends_on_a_handoff_hands_the_turn_on() -> None:
    watch = HandoffWatch()
    watch.see(agent_pb2.AgentEvent(message_delta=agent_pb2.MessageDelta(text="for billing")))
    watch.see(agent_pb2.AgentEvent(tool_call=agent_pb2.ToolCall(tool="transfer_to_billing")))
    watch.see(agent_pb2.AgentEvent(tool_result=agent_pb2.ToolResult(tool="transfer_to_billing")))
    watch.see(_handoff("agents/billing"))
    watch.see(agent_pb2.AgentEvent(state_update=agent_pb2.StateUpdate(node="tools")))
    watch.see(agent_pb2.AgentEvent(usage=common_pb2.TokenUsage(input_tokens=3)))
    assert watch.closing is not None
    assert watch.closing.to_agent == "agents/billing"


def test_a_handoff_the_run_goes_on_after_is_the_agents_own() -> None:
    for after in (
        agent_pb2.AgentEvent(message_delta=agent_pb2.MessageDelta(text="Bob here")),
        agent_pb2.AgentEvent(tool_call=agent_pb2.ToolCall(tool="search")),
        agent_pb2.AgentEvent(interrupt=common_pb2.Interrupt(id="i1")),
    ):
        watch = HandoffWatch()
        watch.see(_handoff("agents/bob"))
        watch.see(after)
        assert watch.closing is None


def test_the_target_is_another_well_named_agent() -> None:
    assert handoff_target(agent_pb2.Handoff(to_agent="agents/billing"), "triage") == "billing"
    assert handoff_target(agent_pb2.Handoff(to_agent="agents/triage"), "triage") is None
    assert handoff_target(agent_pb2.Handoff(to_agent="agents/Not_An_Id"), "triage") is None
    assert handoff_target(agent_pb2.Handoff(to_agent="billing"), "triage") is None
    assert handoff_target(agent_pb2.Handoff(), "triage") is None


def test_hand_offs_stop_at_the_limit() -> None:
    assert may_hand_off(0, 3)
    assert may_hand_off(2, 3)
    assert not may_hand_off(3, 3)
    assert not may_hand_off(0, 0)


def test_the_next_agent_gets_the_message_and_a_note_of_the_handoff() -> None:
    user = [common_pb2.Part(text="my invoice is wrong")]
    said = [common_pb2.Part(text=" This is for billing. "), common_pb2.Part(text="")]
    parts = handoff_parts(user, "the supervisor", "invoice question", "agents/triage", said)
    assert parts[0] == user[0]
    assert parts[1].text == (
        "the supervisor handed this message over to you (invoice question)."
        " agents/triage said: This is for billing."
    )
    bare = handoff_parts(user, "agents/triage", " ", "agents/triage", [])
    assert bare[1].text == "agents/triage handed this message over to you."
    long = handoff_parts(user, "a", "", "a", [common_pb2.Part(text="x" * 10_000)])
    assert len(long[1].text) == MAX_CONTEXT_CHARS


def test_the_reply_is_every_answer_in_order() -> None:
    first = [common_pb2.Part(text="a")]
    second = [common_pb2.Part(text="b"), common_pb2.Part(text="c")]
    assert [p.text for p in aggregate([first, [], second])] == ["a", "b", "c"]


def test_the_turns_tokens_are_every_runs() -> None:
    total = usage_sum(
        [
            common_pb2.TokenUsage(input_tokens=3, output_tokens=2, total_tokens=5),
            common_pb2.TokenUsage(input_tokens=1, output_tokens=1),
        ]
    )
    assert (total.input_tokens, total.output_tokens, total.total_tokens) == (4, 3, 7)
