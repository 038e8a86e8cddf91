"""A separate package of agents, as a deployment would install one: ``greeter`` and
``counting_agent`` are declared through the ``agentmesh.agents`` entry point (see the
dist-info beside it); ``slow_agent`` is named by ``AGENTMESH_AGENT_GRAPHS`` in the
crash-resume test."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AIMessage, AnyMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from agentmesh.agent.agents.structured import structured_agent
from agentmesh.agent.definition import define_agent

COUNTER_ENV = "AGENTMESH_TEST_COUNTER_FILE"
"""File each node of ``slow_agent`` and ``counting_agent`` appends its name to: the
side-effect counter."""
RELEASE_ENV = "AGENTMESH_TEST_RELEASE_FILE"
"""``slow_agent``'s second node waits until this file exists."""


class State(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    name: str
    output: dict[str, Any]


def _greet(state: State) -> dict[str, Any]:
    greeting = f"Hello, {state.get('name') or 'stranger'}!"
    return {"messages": [AIMessage(content=greeting)], "output": {"greeting": greeting}}


_greeter_graph = StateGraph(State)
_greeter_graph.add_node("greet", _greet)
_greeter_graph.add_edge(START, "greet")
_greeter_graph.add_edge("greet", END)

greeter = define_agent(
    id="greeter",
    display_name="Greeter",
    description="Greets by name; installed from a separate package.",
    graph=_greeter_graph,
    input_schema={"type": "object", "properties": {"name": {"type": "string"}}},
)


def _count(node: str) -> None:
    with Path(os.environ[COUNTER_ENV]).open("a") as counter:
        counter.write(node + "\n")


def _first(state: State) -> dict[str, Any]:
    _count("first")
    return {}


async def _second(state: State) -> dict[str, Any]:
    release = Path(os.environ[RELEASE_ENV])
    for _ in range(1200):  # bounded: at most ~60 s
        if release.exists():
            break
        await asyncio.sleep(0.05)
    _count("second")
    return {"messages": [AIMessage(content="both steps done")], "output": {"done": True}}


_slow_graph = StateGraph(State)
_slow_graph.add_node("first", _first)
_slow_graph.add_node("second", _second)
_slow_graph.add_edge(START, "first")
_slow_graph.add_edge("first", "second")
_slow_graph.add_edge("second", END)

slow_agent = define_agent(
    id="slow-test",
    display_name="Slow (test)",
    description="Two steps, the second waits for a file: a run to kill mid-graph.",
    graph=_slow_graph,
)


def _count_turn(state: State) -> dict[str, Any]:
    _count("turn")
    turns = len(Path(os.environ[COUNTER_ENV]).read_text().split())
    reply = f"turn {turns}"
    return {"messages": [AIMessage(content=reply)], "output": {"turns": turns}}


_counting_graph = StateGraph(State)
_counting_graph.add_node("turn", _count_turn)
_counting_graph.add_edge(START, "turn")
_counting_graph.add_edge("turn", END)

counting_agent = define_agent(
    id="counting-test",
    display_name="Counting (test)",
    description="One step with a side effect: appends to a counter file, replies its count.",
    graph=_counting_graph,
)


def city_facts(resources: Any) -> Any:
    """An agent of a separate package that calls the deployment's model: named by
    ``AGENTMESH_AGENT_GRAPHS`` as a function, it is given the service's resources."""
    return structured_agent(
        resources,
        id="city-facts-pkg",
        display_name="City facts (package)",
        description="Names the largest city of a country, with its population.",
        output_schema={
            "type": "object",
            "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
            "required": ["city", "population"],
        },
    )
