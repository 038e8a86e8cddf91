"""The agents that work with no model, over real sockets: the calculator calls its
tool (tool call and tool result events), the approval agent pauses for a human and
acts on the answer, the summarizer shortens a text."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import grpc
import pytest
from google.protobuf import struct_pb2

from agentmesh.agent.app import build_agent
from agentmesh.core.server import RunningServer, start_server
from agentmesh.core.settings import Settings
from agentmesh.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from component.conftest import SECRET, Metadata
from component.memory_helpers import uid

if TYPE_CHECKING:
    AgentStub: TypeAlias = agent_pb2_grpc.AgentServiceAsyncStub
else:
    AgentStub = agent_pb2_grpc.AgentServiceStub


@pytest.fixture
async def agent(memory_server: RunningServer) -> AsyncIterator[AgentStub]:
    settings = Settings.from_env(
        {
            "AGENTMESH_GRPC_PORT": "0",
            "AGENTMESH_METRICS_PORT": "0",
            "AGENTMESH_AUTH_HS256_SECRET": SECRET,
            "AGENTMESH_MEMORY_ADDR": f"127.0.0.1:{memory_server.port}",
        },
        service="agent",
    )
    running = await start_server(settings, await build_agent(settings))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield cast("AgentStub", agent_pb2_grpc.AgentServiceStub(channel))
    finally:
        await running.stop(0)


def _struct(**values: Any) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


async def test_the_offline_agents_are_listed(agent: AgentStub, tenant_a: Metadata) -> None:
    listed = await agent.ListAgents(
        agent_pb2.ListAgentsRequest(filter='labels.offline = "true"'), metadata=tenant_a
    )
    assert {a.name for a in listed.agents} >= {
        "agents/approval",
        "agents/calculator",
        "agents/echo",
        "agents/summarizer",
    }


async def test_the_calculator_calls_its_tool(agent: AgentStub, tenant_a: Metadata) -> None:
    events = [
        event
        async for event in agent.StreamAgent(
            agent_pb2.StreamAgentRequest(
                name="agents/calculator", parts=[common_pb2.Part(text="12 * (3 + 4)")]
            ),
            metadata=tenant_a,
        )
    ]
    calls = [e.tool_call for e in events if e.HasField("tool_call")]
    results = [e.tool_result for e in events if e.HasField("tool_result")]
    assert [c.tool for c in calls] == ["calculator"]
    assert calls[0].arguments["expression"] == "12 * (3 + 4)"
    assert results[0].tool_call_id == calls[0].id
    assert results[0].parts[0].text == "84"
    final = events[-1].final
    assert final.parts[0].text == "12 * (3 + 4) = 84"
    assert final.output["result"] == "84"


async def test_the_calculator_refuses_code(agent: AgentStub, tenant_a: Metadata) -> None:
    response = await agent.InvokeAgent(
        agent_pb2.InvokeAgentRequest(
            name="agents/calculator", input=_struct(expression='__import__("os").getcwd()')
        ),
        metadata=tenant_a,
    )
    assert response.result.status == agent_pb2.RUN_STATUS_COMPLETED
    assert "only numbers" in str(response.result.output["error"])


@pytest.mark.parametrize(("answer", "approved"), [(True, True), ("no", False)])
async def test_the_approval_agent_acts_only_on_a_yes(
    agent: AgentStub, tenant_a: Metadata, answer: Any, approved: bool
) -> None:
    thread = f"approve-{uid()}"
    paused = await agent.InvokeAgent(
        agent_pb2.InvokeAgentRequest(
            name="agents/approval", thread_id=thread, input=_struct(action="refund order 42")
        ),
        metadata=tenant_a,
    )
    assert paused.result.status == agent_pb2.RUN_STATUS_INTERRUPTED
    assert paused.result.interrupt.value.struct_value["question"] == "Approve: refund order 42?"
    value = struct_pb2.Value()
    value.MergeFrom(_struct(v=answer).fields["v"])
    events = [
        event
        async for event in agent.ResumeAgent(
            agent_pb2.ResumeAgentRequest(
                name="agents/approval",
                thread_id=thread,
                resume=common_pb2.ResumeInput(
                    interrupt_id=paused.result.interrupt.id, answer=value
                ),
            ),
            metadata=tenant_a,
        )
    ]
    final = events[-1].final
    assert final.output["approved"] is approved
    assert final.parts[0].text.startswith("Approved" if approved else "Not approved")


async def test_the_summarizer_shortens_a_text(agent: AgentStub, tenant_a: Metadata) -> None:
    text = (
        "Agents run LangGraph graphs. The cafeteria opens at noon. "
        "Agent graphs keep their threads in Memory. Parking is free on Sundays. "
        "Any agent replica continues any graph thread."
    )
    response = await agent.InvokeAgent(
        agent_pb2.InvokeAgentRequest(
            name="agents/summarizer", input=_struct(text=text, sentences=2)
        ),
        metadata=tenant_a,
    )
    summary = str(response.result.output["summary"])
    assert "cafeteria" not in summary
    assert "Parking" not in summary
    assert response.result.output["method"] == "extractive"
