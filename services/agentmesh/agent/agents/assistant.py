"""``agents/assistant``: a model-backed assistant with tools (recall, calculator,
artifacts). It is
listed always; with no model configured its runs are FAILED_PRECONDITION naming the
setting that enables it (``AGENTMESH_LLM_DEFAULT_MODEL``, and for a local
OpenAI-compatible server ``AGENTMESH_LLM_OPENAI_BASE_URL``)."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, TypedDict

from langchain_core.messages import AIMessage, AnyMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode

from agentmesh.agent.agents.artifacts import artifacts_tool
from agentmesh.agent.agents.calculator import calculator
from agentmesh.agent.agents.recall import recall_tool
from agentmesh.agent.definition import AgentDefinition, define_agent
from agentmesh.agent.registry import Skill
from agentmesh.agent.resources import AgentResources
from agentmesh.agent.runtime.inputs import MODEL_KEY

SYSTEM_PROMPT: Final = (
    "You are a helpful assistant. Use the recall tool to look up what the user told you"
    " before, the calculator tool for arithmetic, and the artifacts tool to save a"
    " document the user wants kept (a note, a plan, a draft), read one back or list"
    " them. Answer briefly."
)


class AssistantState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]


def assistant_agent(resources: AgentResources) -> AgentDefinition:
    tools = [calculator, recall_tool(resources), artifacts_tool(resources)]

    async def model(state: AssistantState, config: RunnableConfig) -> dict[str, Any]:
        name = str(config.get("configurable", {}).get(MODEL_KEY, ""))
        chat = (await resources.models.aget(name)).bind_tools(tools)
        reply = await chat.ainvoke([SystemMessage(content=SYSTEM_PROMPT), *state["messages"]])
        return {"messages": [reply]}

    def route(state: AssistantState) -> Literal["tools", "__end__"]:
        last = state["messages"][-1]
        return "tools" if isinstance(last, AIMessage) and last.tool_calls else "__end__"

    builder = StateGraph(AssistantState)
    builder.add_node("model", model)
    builder.add_node("tools", ToolNode(tools))
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", route)
    builder.add_edge("tools", "model")
    return define_agent(
        id="assistant",
        display_name="Assistant",
        description=(
            "A general assistant backed by an LLM, with tools: recall (your memories), a"
            " calculator, and artifacts (saves, reads and lists your named documents)."
            " Needs a model: AGENTMESH_LLM_DEFAULT_MODEL."
        ),
        graph=builder,
        skills=[
            Skill(
                id="chat",
                display_name="Chat",
                description=(
                    "Answers questions, looks up your memories, calculates, keeps documents."
                ),
                examples=(
                    "what did I tell you about my trip?",
                    "how much is 15% of 240?",
                    "save this packing list as packing-list",
                ),
                tags=("llm",),
            )
        ],
        labels={"team": "platform", "llm": "true"},
        needs=("model",),
    )
