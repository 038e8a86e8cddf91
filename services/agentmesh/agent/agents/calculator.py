"""``agents/calculator``: evaluates arithmetic by calling a tool, the way a model-backed
agent would (a tool call, the tool's result, an answer), with no model: the plan step
reads the expression from the input or the message."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AIMessage, AnyMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode

from agentmesh.agent.agents.arithmetic import CalculationError, calculate
from agentmesh.agent.definition import AgentDefinition, define_agent
from agentmesh.agent.registry import Skill
from agentmesh.agent.runtime.events import last_user_text, message_text


@tool
def calculator(expression: str) -> str:
    """Evaluates an arithmetic expression: numbers, + - * / // % **, parentheses."""
    try:
        return str(calculate(expression))
    except CalculationError as exc:
        return f"error: {exc}"


class CalculatorState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    expression: str
    output: dict[str, Any]


def _plan(state: CalculatorState) -> dict[str, Any]:
    expression = state.get("expression") or last_user_text(state.get("messages", []))
    call = {
        "id": f"call-{uuid.uuid4().hex[:12]}",
        "name": "calculator",
        "args": {"expression": expression},
    }
    return {"messages": [AIMessage(content="", tool_calls=[call])], "expression": ""}


def _answer(state: CalculatorState) -> dict[str, Any]:
    result = next(
        (
            message_text(m)
            for m in reversed(state.get("messages", []))
            if isinstance(m, ToolMessage)
        ),
        "",
    )
    call = next(
        m for m in reversed(state.get("messages", [])) if isinstance(m, AIMessage) and m.tool_calls
    )
    expression = call.tool_calls[0]["args"]["expression"]
    if result.startswith("error: "):
        reply = f"I cannot calculate {expression!r}: {result[len('error: ') :]}"
        return {"messages": [AIMessage(content=reply)], "output": {"error": result[7:]}}
    return {
        "messages": [AIMessage(content=f"{expression} = {result}")],
        "output": {"expression": expression, "result": result},
    }


def calculator_agent() -> AgentDefinition:
    builder = StateGraph(CalculatorState)
    builder.add_node("plan", _plan)
    builder.add_node("tools", ToolNode([calculator]))
    builder.add_node("answer", _answer)
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "tools")
    builder.add_edge("tools", "answer")
    builder.add_edge("answer", END)
    return define_agent(
        id="calculator",
        display_name="Calculator",
        description=(
            "Calculates arithmetic expressions with a tool (no model, no eval): numbers,"
            " + - * / // % ** and parentheses."
        ),
        graph=builder,
        skills=[
            Skill(
                id="arithmetic",
                display_name="Arithmetic",
                description="Evaluates an arithmetic expression exactly.",
                examples=("what is 12 * (3 + 4)?", "2 ** 10", "17 % 5"),
                tags=("math", "tools"),
            )
        ],
        input_schema={
            "type": "object",
            "properties": {"expression": {"type": "string", "maxLength": 256}},
            "additionalProperties": False,
        },
        output_schema={
            "type": "object",
            "properties": {
                "expression": {"type": "string"},
                "result": {"type": "string"},
                "error": {"type": "string"},
            },
        },
        labels={"team": "platform", "offline": "true"},
    )
