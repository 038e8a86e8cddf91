"""``agents/recall``: answers from the caller's long-term memories (Memory's semantic
search), with no model: the closest memories, best first. The search tool is shared
with the assistant."""

from __future__ import annotations

from typing import Annotated, Any, Final, TypedDict

from langchain_core.messages import AIMessage, AnyMessage
from langchain_core.tools import BaseTool, StructuredTool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from agentmesh.agent.definition import AgentDefinition, define_agent
from agentmesh.agent.registry import Skill
from agentmesh.agent.resources import AgentResources
from agentmesh.agent.runtime.events import last_user_text
from agentmesh.core.errors import FailedPrecondition
from agentmesh.langgraph._client import MemoryClient
from agentmesh.v1 import memory_pb2

DEFAULT_TOP_K: Final = 5
MAX_QUERY_CHARS: Final = 4096


async def search_memories(
    memory: MemoryClient | None, query: str, top_k: int = DEFAULT_TOP_K
) -> list[dict[str, Any]]:
    """The caller's memories closest to ``query``, best first."""
    if memory is None:
        raise FailedPrecondition(
            "NO_MEMORY", "recall needs the Memory service: set AGENTMESH_MEMORY_ADDR"
        )
    found = await memory.call(
        memory.stub.SearchMemories,
        memory_pb2.SearchMemoriesRequest(
            text=query[:MAX_QUERY_CHARS], top_k=max(1, min(top_k, 20))
        ),
    )
    return [
        {"memory": hit.memory.name, "content": hit.memory.content, "score": round(hit.score, 4)}
        for hit in found.results
    ]


def recall_tool(resources: AgentResources) -> BaseTool:
    """The search as a LangChain tool (for model-backed agents)."""

    async def recall(query: str) -> str:
        hits = await search_memories(resources.memory, query)
        if not hits:
            return "no memory matches"
        return "\n".join(f"- {hit['content']} (score {hit['score']})" for hit in hits)

    return StructuredTool.from_function(
        coroutine=recall,
        name="recall",
        description="Searches the user's long-term memories by meaning; returns the closest.",
    )


class RecallState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    query: str
    top_k: int
    output: dict[str, Any]


def recall_agent(resources: AgentResources) -> AgentDefinition:
    async def recall(state: RecallState) -> dict[str, Any]:
        query = state.get("query") or last_user_text(state.get("messages", []))
        hits = await search_memories(resources.memory, query, state.get("top_k") or DEFAULT_TOP_K)
        if hits:
            reply = "Here is what I remember:\n" + "\n".join(f"- {h['content']}" for h in hits)
        else:
            reply = "I have no memory of that."
        return {"messages": [AIMessage(content=reply)], "output": {"memories": hits}, "query": ""}

    builder = StateGraph(RecallState)
    builder.add_node("recall", recall)
    builder.add_edge(START, "recall")
    builder.add_edge("recall", END)
    return define_agent(
        id="recall",
        display_name="Recall",
        description="Answers from your long-term memories (semantic search), with no model.",
        graph=builder,
        skills=[
            Skill(
                id="recall",
                display_name="Recall",
                description="Finds what you told it before, by meaning.",
                examples=("what do I like to eat?", "what did I say about my flights?"),
                tags=("memory",),
            )
        ],
        input_schema={
            "type": "object",
            "properties": {
                "query": {"type": "string", "maxLength": MAX_QUERY_CHARS},
                "top_k": {"type": "integer", "minimum": 1, "maximum": 20},
            },
            "additionalProperties": False,
        },
        output_schema={
            "type": "object",
            "properties": {"memories": {"type": "array", "items": {"type": "object"}}},
        },
        labels={"team": "platform", "offline": "true"},
        needs=("memory",),
    )
