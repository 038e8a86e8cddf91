"""``agents/handoff-test``: two agents in one graph that hand off the way
langgraph-swarm does, without an LLM. And agents of the mesh that hand the turn to
one another (``relay_agent``): ``triage-test`` to ``billing-test``, ``ping-test`` and
``pong-test`` to each other without end.

Each agent is a subgraph node of the parent graph. ``alice`` answers first and calls
its ``transfer_to_bob`` tool, which returns ``Command(goto="bob",
graph=Command.PARENT)`` with the tool's message and ``active_agent``; ``bob`` answers
and ends. Declared through the ``agentmesh.agents`` entry point of this package.
"""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

from langchain_core.messages import AIMessage, AnyMessage, ToolMessage
from langchain_core.tools import BaseTool, InjectedToolCallId, tool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import InjectedState, ToolNode, tools_condition
from langgraph.types import Command, interrupt

from agentmesh.agent.agents.handoff import handoff_tool
from agentmesh.agent.definition import define_agent
from agentmesh.agent.runtime.events import last_user_text


class SwarmState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    active_agent: str


def _transfer_to(agent: str) -> BaseTool:
    """A hand-off tool as langgraph-swarm's ``create_handoff_tool`` makes it."""
    name = f"transfer_to_{agent}"

    @tool(name, description=f"Ask {agent} to take over.")
    def transfer(
        state: Annotated[dict[str, Any], InjectedState],
        tool_call_id: Annotated[str, InjectedToolCallId],
    ) -> Command[Any]:
        message = ToolMessage(
            content=f"Successfully transferred to {agent}", name=name, tool_call_id=tool_call_id
        )
        return Command(
            goto=agent,
            graph=Command.PARENT,
            update={"messages": [*state["messages"], message], "active_agent": agent},
        )

    return transfer


def _alice(state: SwarmState) -> dict[str, Any]:
    question = last_user_text(state.get("messages", []))
    return {
        "messages": [
            AIMessage(
                content=f"Alice: {question!r} is for Bob.",
                name="alice",
                tool_calls=[{"id": "call-bob", "name": "transfer_to_bob", "args": {}}],
            )
        ]
    }


def _bob(state: SwarmState) -> dict[str, Any]:
    question = last_user_text(state.get("messages", []))
    return {"messages": [AIMessage(content=f"Bob: answered {question!r}.", name="bob")]}


def _alice_graph() -> Any:
    builder = StateGraph(SwarmState)
    builder.add_node("model", _alice)
    builder.add_node("tools", ToolNode([_transfer_to("bob")]))
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", tools_condition)
    return builder.compile(name="alice")


def _bob_graph() -> Any:
    builder = StateGraph(SwarmState)
    builder.add_node("model", _bob)
    builder.add_edge(START, "model")
    return builder.compile(name="bob")


def _route(state: SwarmState) -> str:
    return state.get("active_agent") or "alice"


_swarm = StateGraph(SwarmState)
_swarm.add_node("alice", _alice_graph(), destinations=("bob",))
_swarm.add_node("bob", _bob_graph())
_swarm.add_conditional_edges(START, _route, ["alice", "bob"])

handoff_agent = define_agent(
    id="handoff-test",
    display_name="Hand-off (test)",
    description="Alice hands the question to Bob through a transfer_to_bob tool.",
    graph=_swarm,
)


def _relay(agent_id: str, to: str | None) -> Any:
    """One node that answers, then (``to``) calls the hand-off tool to ``to``; the graph
    ends after the tool, as ``create_react_agent`` does for a ``return_direct`` tool."""

    def speak(state: SwarmState) -> dict[str, Any]:
        question = last_user_text(state.get("messages", []))
        if to is None:
            return {"messages": [AIMessage(content=f"{agent_id}: took {question!r}")]}
        call = {"id": f"call-{to}", "name": f"transfer_to_{to}", "args": {"reason": "its field"}}
        return {
            "messages": [
                AIMessage(content=f"{agent_id}: passing to {to}.", name=agent_id, tool_calls=[call])
            ]
        }

    builder = StateGraph(SwarmState)
    builder.add_node("model", speak)
    builder.add_edge(START, "model")
    if to is not None:
        builder.add_node("tools", ToolNode([handoff_tool(to)]))
        builder.add_conditional_edges("model", tools_condition)
        builder.add_edge("tools", END)
    return builder


def relay_agent(agent_id: str, to: str | None) -> Any:
    """Agent ``agent_id`` that hands every turn to ``to`` (None: answers itself)."""
    return define_agent(
        id=agent_id,
        display_name=agent_id,
        description=f"Test agent that hands over to {to}." if to else "Test agent that answers.",
        graph=_relay(agent_id, to),
    )


triage_agent = relay_agent("triage-test", "billing-test")
billing_agent = relay_agent("billing-test", None)
ping_agent = relay_agent("ping-test", "pong-test")
pong_agent = relay_agent("pong-test", "ping-test")
stray_agent = relay_agent("stray-test", "absent-test")
"""Hands off to an agent nobody serves: its answer stands."""


def _gatekeeper(state: SwarmState) -> dict[str, Any]:
    answer = interrupt({"question": "May they pass?"})
    return {"messages": [AIMessage(content=f"gatekeeper-test: {answer}")]}


_gate = StateGraph(SwarmState)
_gate.add_node("ask", _gatekeeper)
_gate.add_edge(START, "ask")
gatekeeper_agent = define_agent(
    id="gatekeeper-test",
    display_name="gatekeeper-test",
    description="Test agent that asks a human before it answers.",
    graph=_gate,
)
doorman_agent = relay_agent("doorman-test", "gatekeeper-test")
"""Hands every turn to ``gatekeeper-test``, which pauses for a human."""
