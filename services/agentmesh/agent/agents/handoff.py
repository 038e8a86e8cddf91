"""Hand-off tools for agents that pass a conversation to another agent of the mesh.

Give an agent ``handoff_tool("billing")`` and let its graph end after the tool runs
(``create_react_agent`` does for a tool with ``return_direct``): the Agent service
tells the tool's result as a ``Handoff`` event (the ``transfer_to_<agent>`` idiom of
langgraph-swarm), and the Conductor, seeing a run end on it, runs ``agents/billing``
next within the same turn, with the user's message and a note of the hand-off.
Inside one graph (a swarm's agents), use langgraph-swarm's own tools instead.
"""

from __future__ import annotations

from langchain_core.tools import BaseTool, StructuredTool

from agentmesh.core.names import validate_id


def handoff_tool(agent_id: str, *, description: str = "") -> BaseTool:
    """A ``transfer_to_<agent_id>`` tool that hands the conversation to ``agent_id`` of
    the mesh; its one argument, ``reason``, is the tool's result: the hand-off's reason,
    told to the next agent and recorded in the routing decision."""
    validate_id(agent_id, field="agent_id")

    def transfer(reason: str = "") -> str:
        return reason.strip() or f"Handing the conversation to agents/{agent_id}"

    return StructuredTool.from_function(
        transfer,
        name=f"transfer_to_{agent_id}",
        description=description or f"Hand the conversation to agents/{agent_id}.",
        return_direct=True,
    )
