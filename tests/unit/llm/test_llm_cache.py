"""The response cache's entries: chat answers round-trip as plain JSON; anything else
read back is a miss, never revived as an object."""

from __future__ import annotations

import json

import pytest
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation

from agentmesh.llm.cache import MAX_ENTRY_BYTES, _decode, _encode


def test_a_chat_answer_with_tool_calls_round_trips() -> None:
    message = AIMessage(
        content="calling",
        tool_calls=[{"name": "calculator", "args": {"expression": "1+1"}, "id": "c1"}],
        usage_metadata={"input_tokens": 5, "output_tokens": 2, "total_tokens": 7},
    )
    encoded = _encode([ChatGeneration(message=message)])
    assert encoded is not None
    (back,) = _decode(encoded) or []
    assert isinstance(back, ChatGeneration)
    assert back.message.content == "calling"
    assert isinstance(back.message, AIMessage)
    assert back.message.tool_calls[0]["args"] == {"expression": "1+1"}
    assert back.message.usage_metadata is None  # a hit spends no tokens


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[]",
        '{"content": "x"}',
        '[{"content": 5, "tool_calls": []}]',
        '[{"content": "x", "tool_calls": [{"name": 1, "args": {}}]}]',
        json.dumps([{"lc": 1, "type": "constructor", "id": ["os", "system"], "kwargs": {}}]),
    ],
)
def test_entries_of_another_shape_are_misses(raw: str) -> None:
    assert _decode(raw) is None


def test_only_chat_answers_of_bounded_size_are_kept() -> None:
    assert _encode([Generation(text="plain completion")]) is None
    huge = AIMessage(content="x" * (MAX_ENTRY_BYTES + 1))
    assert _encode([ChatGeneration(message=huge)]) is None
