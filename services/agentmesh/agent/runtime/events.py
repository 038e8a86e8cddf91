"""LangGraph's stream, as the contract's typed AgentEvents: pure conversions.

A run streams LangGraph chunks (``updates`` after each node, ``messages`` token by
token when asked); these functions turn them into the events of
``agentmesh.v1.AgentEvent`` — message deltas, tool calls and results, state updates,
interrupts, usage — without touching the network, so each rule has a unit test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from google.protobuf import struct_pb2
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from agentmesh.v1 import agent_pb2, common_pb2

MAX_SUMMARY_CHARS: Final = 2048
"""Longest text of one value in a state update (the whole value is in the checkpoint)."""
INTERRUPT_KEY: Final = "__interrupt__"
"""The key of an ``updates`` chunk that carries LangGraph interrupts."""


def message_text(message: BaseMessage) -> str:
    """The text of a message: its string content, or its text blocks joined."""
    content = message.content
    if isinstance(content, str):
        return content
    texts = []
    for block in content:
        if isinstance(block, str):
            texts.append(block)
        elif isinstance(block, Mapping) and block.get("type") == "text":
            texts.append(str(block.get("text", "")))
    return "".join(texts)


def last_user_text(messages: Sequence[BaseMessage]) -> str:
    """The text of the latest user (human) message, or "" when there is none."""
    return next((message_text(m) for m in reversed(messages) if isinstance(m, HumanMessage)), "")


def jsonable(value: Any, *, depth: int = 0) -> Any:  # noqa: PLR0911  # one return per kind
    """``value`` as JSON for a state update: messages as role and text, long text cut,
    anything that is not JSON summarised by its type (never its ``repr``, which may be
    large or hold secrets)."""
    if isinstance(value, BaseMessage):
        return {"type": value.type, "text": _cut(message_text(value))}
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return _cut(value)
    if depth >= 8:
        return f"<{type(value).__name__}>"
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, depth=depth + 1) for k, v in list(value.items())[:100]}
    if isinstance(value, list | tuple):
        return [jsonable(v, depth=depth + 1) for v in value[:100]]
    return f"<{type(value).__name__}>"


def _cut(text: str) -> str:
    return text if len(text) <= MAX_SUMMARY_CHARS else text[:MAX_SUMMARY_CHARS] + "…"


def to_struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    """A JSON object as a Struct (numbers that are not finite become strings)."""
    message = struct_pb2.Struct()
    message.update(json.loads(json.dumps(value, default=str)))
    return message


def to_value(value: Any) -> struct_pb2.Value:
    """Any JSON value as a ``google.protobuf.Value``."""
    wrapper = struct_pb2.Struct()
    wrapper.update({"v": json.loads(json.dumps(jsonable(value), default=str))})
    return wrapper.fields["v"]


@dataclass
class RunTrace:
    """What a run produced so far, kept while its events stream: the reply, the
    output, token usage and the interrupts it ends on."""

    reply: str = ""
    output: dict[str, Any] | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    interrupts: list[common_pb2.Interrupt] = field(default_factory=list)
    tools: list[str] = field(default_factory=list)

    def usage(self) -> common_pb2.TokenUsage:
        return common_pb2.TokenUsage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            total_tokens=self.input_tokens + self.output_tokens,
        )


def update_events(
    node: str, update: Any, trace: RunTrace, *, whole_messages: bool
) -> Iterator[agent_pb2.AgentEvent]:
    """The events of one node's state update (an ``updates`` chunk entry): the AI
    messages it added (as one delta each when tokens were not streamed), their tool
    calls, tool results, and the update itself. ``trace`` keeps the reply, output and
    usage."""
    messages = _messages_of(update)
    for message in messages:
        if isinstance(message, AIMessage):
            text = message_text(message)
            if text:
                trace.reply = text
                if whole_messages:
                    yield agent_pb2.AgentEvent(
                        message_delta=agent_pb2.MessageDelta(message_id=message.id or "", text=text)
                    )
            for call in message.tool_calls:
                trace.tools.append(call["name"])
                yield agent_pb2.AgentEvent(
                    tool_call=agent_pb2.ToolCall(
                        id=call.get("id") or "",
                        tool=call["name"],
                        arguments=to_struct(call.get("args") or {}),
                    )
                )
            usage = message.usage_metadata
            if usage:
                trace.input_tokens += int(usage.get("input_tokens", 0))
                trace.output_tokens += int(usage.get("output_tokens", 0))
        elif isinstance(message, ToolMessage):
            yield agent_pb2.AgentEvent(
                tool_result=agent_pb2.ToolResult(
                    tool_call_id=message.tool_call_id,
                    tool=message.name or "",
                    parts=[common_pb2.Part(text=message_text(message))],
                )
            )
    if isinstance(update, Mapping):
        output = update.get("output")
        if isinstance(output, Mapping):
            trace.output = dict(output)
        values = {str(k): jsonable(v) for k, v in update.items()}
    else:
        values = {"value": jsonable(update)}
    yield agent_pb2.AgentEvent(
        state_update=agent_pb2.StateUpdate(node=node, values=to_struct(values))
    )


def _messages_of(update: Any) -> Sequence[BaseMessage]:
    if not isinstance(update, Mapping):
        return ()
    messages = update.get("messages")
    if isinstance(messages, BaseMessage):
        return (messages,)
    if isinstance(messages, list | tuple):
        return [m for m in messages if isinstance(m, BaseMessage)]
    return ()


def interrupt_events(
    interrupts: Sequence[Any], trace: RunTrace, *, agent: str, thread_id: str
) -> Iterator[agent_pb2.AgentEvent]:
    """The events of LangGraph ``Interrupt``s (an ``__interrupt__`` update)."""
    for raised in interrupts:
        interrupt = common_pb2.Interrupt(
            id=str(getattr(raised, "id", "") or ""),
            value=to_value(getattr(raised, "value", None)),
            agent=agent,
            thread_id=thread_id,
        )
        trace.interrupts.append(interrupt)
        yield agent_pb2.AgentEvent(interrupt=interrupt)


def token_event(chunk: Any) -> agent_pb2.AgentEvent | None:
    """A message delta of a ``messages`` chunk (a token of an AI message), or None."""
    message = chunk[0] if isinstance(chunk, tuple) else chunk
    if not isinstance(message, AIMessage):  # AIMessageChunk is an AIMessage
        return None
    text = message_text(message)
    if not text:
        return None
    return agent_pb2.AgentEvent(
        message_delta=agent_pb2.MessageDelta(message_id=message.id or "", text=text)
    )
