"""``agents/echo``: answers with the text it was given, and counts the turns of its
thread, so a test can see that a second call continues the conversation."""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from agentmesh.agent.definition import AgentDefinition
from agentmesh.agent.registry import ECHO
from agentmesh.agent.runtime.events import last_user_text


class EchoState(TypedDict, total=False):
    """The thread's messages, the structured input's ``text``, and the output."""

    messages: Annotated[list[AnyMessage], add_messages]
    text: str
    output: dict[str, Any]


def _echo(state: EchoState) -> dict[str, Any]:
    messages = state.get("messages", [])
    text = state.get("text") or last_user_text(messages)
    turns = sum(1 for m in messages if isinstance(m, HumanMessage))
    return {
        "messages": [AIMessage(content=text)],
        "output": {"text": text, "turns": turns},
        "text": "",  # consumed: the next turn's text comes with the next input
    }


def echo_agent() -> AgentDefinition:
    """The echo agent: one node, no model."""
    builder = StateGraph(EchoState)
    builder.add_node("echo", _echo)
    builder.add_edge(START, "echo")
    builder.add_edge("echo", END)
    return AgentDefinition(card=ECHO, graph=builder)
