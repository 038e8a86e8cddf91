"""The agents every deployment ships with: they call no model, so they work offline."""

from __future__ import annotations

from agentmesh.agent.agents.approval import approval_agent
from agentmesh.agent.agents.calculator import calculator_agent
from agentmesh.agent.agents.echo import echo_agent
from agentmesh.agent.agents.summarizer import summarizer_agent
from agentmesh.agent.definition import AgentDefinition


def builtin_agents() -> list[AgentDefinition]:
    """The built-in agents, built anew (graphs are not shared between services)."""
    return [echo_agent(), calculator_agent(), approval_agent(), summarizer_agent()]
