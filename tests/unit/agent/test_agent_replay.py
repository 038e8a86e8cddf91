"""The result a repeated request replays: only what the repeated run's checkpoints
added (the thread's earlier reply and output are not the run's)."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.base import CheckpointTuple, empty_checkpoint

from agentmesh.agent.runtime.runner import replayed_result
from agentmesh.v1 import agent_pb2


def _tuple(values: dict[str, Any], versions: dict[str, Any]) -> CheckpointTuple:
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = values
    checkpoint["channel_versions"] = versions
    return CheckpointTuple(
        config={"configurable": {"thread_id": "t"}}, checkpoint=checkpoint, metadata={}
    )


EARLIER = [HumanMessage("hi", id="h1"), AIMessage("earlier reply", id="a1")]


def test_the_reply_and_output_of_the_run_are_replayed() -> None:
    before = _tuple({"messages": EARLIER, "output": {"n": 1}}, {"messages": "2", "output": "2"})
    latest = _tuple(
        {
            "messages": [*EARLIER, HumanMessage("again", id="h2"), AIMessage("new", id="a2")],
            "output": {"n": 2},
        },
        {"messages": "4", "output": "4"},
    )
    result = replayed_result("run-1", "t", latest, before)
    assert result.run_id == "run-1"
    assert result.thread_id == "t"
    assert result.status == agent_pb2.RUN_STATUS_COMPLETED
    assert [p.text for p in result.parts] == ["new"]
    assert result.output["n"] == 2
    assert result.HasField("usage")
    assert result.usage.total_tokens == 0


def test_a_run_that_wrote_no_reply_or_output_replays_none_of_the_threads() -> None:
    before = _tuple({"messages": EARLIER, "output": {"n": 1}}, {"messages": "2", "output": "2"})
    latest = _tuple(
        {"messages": EARLIER, "output": {"n": 1}, "action": "x"},
        {"messages": "2", "output": "2", "action": "3"},
    )
    result = replayed_result("run-2", "t", latest, before)
    assert list(result.parts) == []
    assert not result.HasField("output")


def test_a_run_that_started_the_thread_replays_everything_it_holds() -> None:
    latest = _tuple(
        {"messages": [AIMessage("first", id="a1"), AIMessage("", id="a2")], "output": {"k": "v"}},
        {"messages": "1", "output": "1"},
    )
    result = replayed_result("run-3", "t", latest, None)
    assert [p.text for p in result.parts] == ["first"]  # the last AI message with text
    assert result.output["k"] == "v"
