"""LangGraph's stream, as the contract's typed AgentEvents: pure conversions.

A run streams LangGraph chunks (``updates`` after each node, ``messages`` token by
token when asked); these functions turn them into the events of
``agentmesh.v1.AgentEvent`` — message deltas, tool calls and results, state updates,
interrupts, hand-offs between agents, usage — without touching the network, so each
rule has a unit test.

Multi-agent graphs built the way langgraph-supervisor and langgraph-swarm build them
run each agent as a subgraph node; a subgraph's update carries its whole message
history, so a message already converted in this run (same id) is not converted again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from google.protobuf import struct_pb2
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from agentmesh.core.names import AGENTS
from agentmesh.llm.usage import UsageMeter
from agentmesh.v1 import agent_pb2, common_pb2

MAX_SUMMARY_CHARS: Final = 2048
"""Longest text of one value in a state update (the whole value is in the checkpoint)."""
INTERRUPT_KEY: Final = "__interrupt__"
"""The key of an ``updates`` chunk that carries LangGraph interrupts."""
MAX_CALLERS: Final = 10_000
"""Tool calls a run remembers the caller of, at most (a run's steps are bounded)."""
HANDOFF_PREFIXES: Final = ("transfer_back_to_", "transfer_to_")
"""Tool names of LangGraph's multi-agent hand-offs: langgraph-supervisor and
langgraph-swarm give each agent ``transfer_to_<agent>`` tools that return
``Command(goto=<agent>, graph=Command.PARENT)``; a supervisor's agents answer back
with ``transfer_back_to_<supervisor>``."""


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
    seen_messages: set[str] = field(default_factory=set)
    """Ids of the messages already converted (a subgraph's update repeats them)."""
    agent_id: str = ""
    """The agent that runs (its id): who hands off when no message names the caller."""
    callers: dict[str, str] = field(default_factory=dict)
    """Tool call id -> name of the agent that made the call, kept across updates (a
    tool's result comes in a later node's update than the call)."""

    def count_calls(self, meter: UsageMeter) -> None:
        """Takes the usage of the run's model calls as counted by LangChain's callbacks
        (every call, also those whose answer never reached the state); a graph that
        made no such call keeps what its messages reported."""
        if meter.calls:
            self.input_tokens = meter.usage.input_tokens
            self.output_tokens = meter.usage.output_tokens

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
    calls, tool results, the hand-offs among them, and the update itself. Messages
    this run already converted are skipped. ``trace`` keeps the reply, output and
    usage."""
    for message in _new_messages(update, trace):
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
                if len(trace.callers) < MAX_CALLERS:
                    trace.callers[call.get("id") or ""] = message.name or ""
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
            handoff = handoff_event(
                node,
                message,
                caller=trace.callers.get(message.tool_call_id, "") or trace.agent_id,
                active_agent=_active_agent(update),
            )
            if handoff is not None:
                yield handoff
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


def _new_messages(update: Any, trace: RunTrace) -> Iterator[BaseMessage]:
    """The messages of ``update`` this run has not converted yet (by id)."""
    for message in _messages_of(update):
        if message.id:
            if message.id in trace.seen_messages:
                continue
            trace.seen_messages.add(message.id)
        yield message


def _active_agent(update: Any) -> str:
    """The ``active_agent`` a swarm's update sets, or ""."""
    value = update.get("active_agent") if isinstance(update, Mapping) else None
    return value if isinstance(value, str) else ""


def _tool_form(agent: str) -> str:
    """An agent's name as the hand-off libraries put it in a tool name."""
    return re.sub(r"\s+", "_", agent.strip()).lower()


def handoff_event(
    node: str, message: ToolMessage, *, caller: str = "", active_agent: str = ""
) -> agent_pb2.AgentEvent | None:
    """The Handoff of a hand-off tool's result (see ``HANDOFF_PREFIXES``), or None for
    any other tool result and for a hand-off tool that failed.

    ``from_agent`` is the agent that called the tool (``caller``, the name on its AI
    message, else ``node``: the subgraph node whose update carries the result);
    ``to_agent`` is the agent the tool names, spelled as ``active_agent`` when that
    names the same agent (swarm keeps the exact name there, the tool name is lower
    case); ``reason`` is the tool result's text.
    """
    tool = message.name or ""
    if message.status == "error":
        return None
    target = next((tool[len(p) :] for p in HANDOFF_PREFIXES if tool.startswith(p)), "")
    if not target:
        return None
    if active_agent and _tool_form(active_agent) == target:
        target = active_agent
    return agent_pb2.AgentEvent(
        handoff=agent_pb2.Handoff(
            from_agent=AGENTS.format(caller or node),
            to_agent=AGENTS.format(target),
            reason=_cut(message_text(message)),
        )
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
