"""The mesh hand-off tool: named as the Agent service recognises hand-offs, ends the
agent's run, tells the reason, and refuses a malformed agent id."""

from __future__ import annotations

import pytest
from langchain_core.messages import ToolMessage

from agentmesh.agent.agents.handoff import handoff_tool
from agentmesh.agent.runtime.events import handoff_event
from agentmesh.core.errors import InvalidArgument


def test_the_tool_hands_off_to_the_agent_it_names_and_ends_the_run() -> None:
    tool = handoff_tool("billing")
    assert tool.name == "transfer_to_billing"
    assert tool.return_direct
    said = tool.invoke({"reason": " an invoice "})
    assert said == "an invoice"
    assert tool.invoke({}) == "Handing the conversation to agents/billing"
    message = ToolMessage(content=said, name=tool.name, tool_call_id="c1")
    event = handoff_event("model", message, caller="triage")
    assert event is not None
    assert (event.handoff.from_agent, event.handoff.to_agent) == ("agents/triage", "agents/billing")
    assert event.handoff.reason == said


def test_a_malformed_agent_id_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        handoff_tool("Not An Id")
