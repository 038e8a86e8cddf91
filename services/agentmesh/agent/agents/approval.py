"""``agents/approval``: asks a human yes or no before it acts (a LangGraph interrupt),
then acts or does not. Resume the thread with ``true``/``false`` (or ``"yes"``/``"no"``)."""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

from langchain_core.messages import AIMessage, AnyMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import interrupt

from agentmesh.agent.definition import AgentDefinition, define_agent
from agentmesh.agent.registry import Skill


class ApprovalState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    action: str
    approved: bool
    output: dict[str, Any]


def approved(answer: Any) -> bool:
    """A human's yes: ``true``, or a text that says yes."""
    if isinstance(answer, bool):
        return answer
    if isinstance(answer, str):
        return answer.strip().lower() in {"yes", "y", "true", "approve", "approved", "ok"}
    if isinstance(answer, dict):
        return approved(answer.get("approved", answer.get("answer")))
    return False


def _ask(state: ApprovalState) -> dict[str, Any]:
    action = state.get("action") or "the requested action"
    answer = interrupt(
        {"question": f"Approve: {action}?", "action": action, "answers": ["yes", "no"]}
    )
    return {"approved": approved(answer)}


def _act(state: ApprovalState) -> dict[str, Any]:
    action = state.get("action") or "the requested action"
    if state.get("approved"):
        reply = f"Approved: {action}. Done."
    else:
        reply = f"Not approved: {action}. Nothing was done."
    return {
        "messages": [AIMessage(content=reply)],
        "output": {"action": action, "approved": bool(state.get("approved"))},
    }


def approval_agent() -> AgentDefinition:
    builder = StateGraph(ApprovalState)
    builder.add_node("ask", _ask)
    builder.add_node("act", _act)
    builder.add_edge(START, "ask")
    builder.add_edge("ask", "act")
    builder.add_edge("act", END)
    return define_agent(
        id="approval",
        display_name="Approval",
        description=(
            "Asks a human to approve an action before doing it; the run pauses on an"
            " interrupt until ResumeAgent answers yes or no."
        ),
        graph=builder,
        skills=[
            Skill(
                id="approve",
                display_name="Approve an action",
                description="Pauses for a human's yes or no, then acts on it.",
                examples=("refund order 1234 after approval", "ask before deleting the report"),
                tags=("human-in-the-loop",),
            )
        ],
        input_schema={
            "type": "object",
            "properties": {"action": {"type": "string", "maxLength": 1024}},
            "required": ["action"],
            "additionalProperties": False,
        },
        output_schema={
            "type": "object",
            "properties": {"action": {"type": "string"}, "approved": {"type": "boolean"}},
        },
        labels={"team": "platform", "offline": "true"},
        interrupts=True,
    )
