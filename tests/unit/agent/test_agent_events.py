"""LangGraph stream chunks as AgentEvents: the pure conversions."""

from __future__ import annotations

from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langgraph.types import Interrupt

from agentmesh.agent.runtime.events import (
    MAX_SUMMARY_CHARS,
    RunTrace,
    interrupt_events,
    jsonable,
    message_text,
    token_event,
    update_events,
)


def test_message_text_joins_text_blocks() -> None:
    assert message_text(AIMessage(content="plain")) == "plain"
    blocks = AIMessage(content=[{"type": "text", "text": "a"}, {"type": "image"}, "b"])
    assert message_text(blocks) == "ab"


def test_an_ai_update_gives_a_delta_tool_calls_usage_and_the_state() -> None:
    trace = RunTrace()
    message = AIMessage(
        content="thinking",
        id="m1",
        tool_calls=[{"id": "c1", "name": "calculator", "args": {"expression": "1+1"}}],
        usage_metadata={"input_tokens": 7, "output_tokens": 3, "total_tokens": 10},
    )
    events = list(update_events("model", {"messages": [message]}, trace, whole_messages=True))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["message_delta", "tool_call", "state_update"]
    assert events[0].message_delta.text == "thinking"
    assert events[1].tool_call.tool == "calculator"
    assert events[1].tool_call.arguments["expression"] == "1+1"
    assert events[2].state_update.node == "model"
    assert (trace.reply, trace.input_tokens, trace.output_tokens) == ("thinking", 7, 3)
    assert trace.usage().total_tokens == 10
    assert trace.tools == ["calculator"]


def test_streamed_tokens_are_not_sent_twice_as_whole_messages() -> None:
    trace = RunTrace()
    events = list(
        update_events("model", {"messages": [AIMessage(content="hi")]}, trace, whole_messages=False)
    )
    assert [e.WhichOneof("event") for e in events] == ["state_update"]
    assert trace.reply == "hi"  # still the run's reply


def test_tool_results_and_output_are_kept() -> None:
    trace = RunTrace()
    update = {
        "messages": [ToolMessage(content="2", tool_call_id="c1", name="calculator")],
        "output": {"value": 2},
    }
    events = list(update_events("tools", update, trace, whole_messages=True))
    assert events[0].tool_result.tool_call_id == "c1"
    assert events[0].tool_result.parts[0].text == "2"
    assert trace.output == {"value": 2}


def test_state_values_are_summarised_never_dumped() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "secret-token-123"

    value = jsonable({"big": "x" * 10_000, "obj": Opaque(), "msg": HumanMessage(content="q")})
    assert len(value["big"]) == MAX_SUMMARY_CHARS + 1
    assert value["obj"] == "<Opaque>"
    assert value["msg"] == {"type": "human", "text": "q"}
    deep: list[object] = []
    cursor = deep
    for _ in range(20):
        nested: list[object] = []
        cursor.append(nested)
        cursor = nested
    assert "<list>" in str(jsonable(deep))


def test_interrupts_become_events_and_are_remembered() -> None:
    trace = RunTrace()
    (event,) = interrupt_events(
        [Interrupt(value={"question": "ok?"}, id="i1")],
        trace,
        agent="agents/a",
        thread_id="t",
    )
    assert event.interrupt.id == "i1"
    assert event.interrupt.value.struct_value["question"] == "ok?"
    assert trace.interrupts[0].thread_id == "t"


def test_token_events_only_for_ai_text() -> None:
    assert token_event((AIMessageChunk(content="to", id="m"), {})).message_delta.text == "to"  # type: ignore[union-attr]
    assert token_event((AIMessageChunk(content=""), {})) is None
    assert token_event((HumanMessage(content="x"), {})) is None
