"""The agents every deployment ships with. Echo, calculator, approval, recall and the
summarizer's extractive mode call no model, so they work offline; the assistant and the
summarizer's abstractive mode use the configured model."""

from __future__ import annotations

from agentmesh.agent.agents.approval import approval_agent
from agentmesh.agent.agents.assistant import assistant_agent
from agentmesh.agent.agents.calculator import calculator_agent
from agentmesh.agent.agents.echo import echo_agent
from agentmesh.agent.agents.recall import recall_agent
from agentmesh.agent.agents.summarizer import summarizer_agent
from agentmesh.agent.definition import AgentDefinition
from agentmesh.agent.resources import AgentResources


def builtin_agents(resources: AgentResources | None = None) -> list[AgentDefinition]:
    """The built-in agents, built anew (graphs are not shared between services). Without
    ``resources`` only those that need nothing from the deployment."""
    offline = [echo_agent(), calculator_agent(), approval_agent()]
    if resources is None:
        return [*offline, summarizer_agent()]
    return [
        *offline,
        summarizer_agent(resources),
        recall_agent(resources),
        assistant_agent(resources),
    ]
