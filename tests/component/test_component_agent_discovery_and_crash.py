"""Agents from elsewhere and runs that survive their process.

- A separate package (``tests/agent_fixtures``, with its dist-info) declares an agent
  through the ``agentmesh.agents`` entry point: the service discovers it, lists and
  runs it. ``AGENTMESH_AGENT_GRAPHS`` names one by ``module:attribute``; a bad path is
  a ConfigError at start.
- Crash resume: a real ``python -m agentmesh.agent`` process is SIGKILLed while its
  run waits in the second node; invoked again on the same thread through another
  process, the run continues from its last checkpoint and the first node does not
  run again (a side-effect counter file says so).
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest
from google.protobuf import struct_pb2

from agentmesh.agent.app import build_agent
from agentmesh.agent.settings import AgentSettings
from agentmesh.core.server import RunningServer
from agentmesh.core.settings import ConfigError
from agentmesh.devstack._proc import ChildProcess
from agentmesh.v1 import agent_pb2, common_pb2
from component.agent_helpers import FIXTURES, AgentStub, agent_process, agent_settings, served_agent
from component.conftest import Metadata
from component.memory_helpers import agent_runs, eventually, uid


async def test_an_installed_package_declares_an_agent_through_the_entry_point(
    monkeypatch: pytest.MonkeyPatch, tenant_a: Metadata
) -> None:
    monkeypatch.syspath_prepend(str(FIXTURES))  # as if pip-installed: its dist-info is found
    async with served_agent(AgentSettings()) as stub:
        listed = await stub.ListAgents(agent_pb2.ListAgentsRequest(), metadata=tenant_a)
        assert {a.name for a in listed.agents} >= {"agents/echo", "agents/greeter"}
        response = await stub.InvokeAgent(
            agent_pb2.InvokeAgentRequest(name="agents/greeter", input=_struct(name="Ada")),
            metadata=tenant_a,
        )
        assert response.result.output["greeting"] == "Hello, Ada!"


async def test_a_setting_names_an_agent_by_module_and_attribute(
    monkeypatch: pytest.MonkeyPatch, tenant_a: Metadata
) -> None:
    monkeypatch.syspath_prepend(str(FIXTURES))
    async with served_agent(AgentSettings(graphs="agentmesh_test_agents:slow_agent")) as stub:
        card = await stub.GetAgent(
            agent_pb2.GetAgentRequest(name="agents/slow-test"), metadata=tenant_a
        )
        assert card.display_name == "Slow (test)"
    for bad in ("no_such_module:agent", "agentmesh_test_agents:missing", "no-colon"):
        settings = agent_settings()
        with pytest.raises(ConfigError):
            await build_agent(settings, AgentSettings(graphs=bad))


def _struct(**values: str) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def _slow_process(
    memory_port: int, work: Path, name: str
) -> AbstractAsyncContextManager[tuple[ChildProcess, AgentStub]]:
    return agent_process(
        memory_port,
        work,
        name,
        AGENTMESH_AGENT_GRAPHS="agentmesh_test_agents:slow_agent",
        AGENTMESH_TEST_COUNTER_FILE=str(work / "counter"),
        AGENTMESH_TEST_RELEASE_FILE=str(work / "release"),
    )


async def test_a_run_killed_mid_graph_continues_on_another_process_without_redoing_steps(
    memory_server: RunningServer, db: asyncpg.Pool, tenant_a: Metadata
) -> None:
    work = Path(tempfile.mkdtemp(prefix="agentmesh-crash-"))
    counter = work / "counter"
    thread = f"crash-{uid()}"

    async def steps() -> list[str]:
        return counter.read_text().split() if counter.exists() else []

    async with _slow_process(memory_server.port, work, "agent-a") as (first, stub):
        call = asyncio.ensure_future(
            stub.InvokeAgent(
                agent_pb2.InvokeAgentRequest(
                    name="agents/slow-test", thread_id=thread, parts=[common_pb2.Part(text="go")]
                ),
                metadata=tenant_a,
                timeout=60,
            )
        )

        async def first_step_checkpointed() -> bool:
            count: int = await db.fetchval(
                "SELECT count(*) FROM memory.checkpoints WHERE tenant = $1 AND thread_id = $2",
                "tenant-a",
                thread,
            )
            return await steps() == ["first"] and count >= 2

        await eventually(first_step_checkpointed, "the first step and its checkpoint", 30.0)
        os.kill(first.pid, signal.SIGKILL)  # mid-graph: the second step waits
        with pytest.raises(grpc.aio.AioRpcError):
            await call
        # A new input on the thread is refused: the unfinished run comes first.
        (work / "release").touch()

    async with _slow_process(memory_server.port, work, "agent-b") as (_second, stub):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.InvokeAgent(
                agent_pb2.InvokeAgentRequest(
                    name="agents/slow-test", thread_id=thread, parts=[common_pb2.Part(text="x")]
                ),
                metadata=tenant_a,
                timeout=30,
            )
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        response = await stub.InvokeAgent(
            agent_pb2.InvokeAgentRequest(name="agents/slow-test", thread_id=thread),
            metadata=tenant_a,
            timeout=30,
        )
    result = response.result
    assert result.status == agent_pb2.RUN_STATUS_COMPLETED, result
    assert result.output["done"] is True
    assert await steps() == ["first", "second"]  # the first step did not run again


async def test_a_cancelled_call_stops_its_graph(
    monkeypatch: pytest.MonkeyPatch, memory_server: RunningServer, tenant_a: Metadata
) -> None:
    """The client goes away while the second node waits: the graph is cancelled, and
    the node never completes even once the file it waits for appears."""
    monkeypatch.syspath_prepend(str(FIXTURES))
    work = Path(tempfile.mkdtemp(prefix="agentmesh-cancel-"))
    monkeypatch.setenv("AGENTMESH_TEST_COUNTER_FILE", str(work / "counter"))
    monkeypatch.setenv("AGENTMESH_TEST_RELEASE_FILE", str(work / "release"))
    counter = work / "counter"

    async def first_done() -> bool:
        return counter.exists() and counter.read_text().split() == ["first"]

    agent = AgentSettings(graphs="agentmesh_test_agents:slow_agent")
    async with served_agent(agent) as stub:
        call = stub.StreamAgent(
            agent_pb2.StreamAgentRequest(
                name="agents/slow-test", parts=[common_pb2.Part(text="go")]
            ),
            metadata=tenant_a,
            timeout=60,
        )
        reading = asyncio.ensure_future(_drain_events(call))
        await eventually(first_done, "the first step", 30.0)
        cancelled_before = agent_runs("slow-test", "error: cancelled")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading

        async def run_cancelled() -> bool:
            return agent_runs("slow-test", "error: cancelled") == cancelled_before + 1

        await eventually(run_cancelled, "the server to end the run as cancelled", 30.0)
        (work / "release").touch()
        await asyncio.sleep(0.5)  # what a still-running node would need to finish
        assert counter.read_text().split() == ["first"]


async def _drain_events(call: object) -> list[agent_pb2.AgentEvent]:
    return [event async for event in call]  # type: ignore[attr-defined]


async def test_a_run_past_its_time_is_deadline_exceeded_and_stops(
    monkeypatch: pytest.MonkeyPatch, tenant_a: Metadata
) -> None:
    """AGENTMESH_AGENT_RUN_TIMEOUT_S bounds a run whose caller set a longer deadline: the
    call is DEADLINE_EXCEEDED (RUN_DEADLINE) and the waiting node never completes."""
    monkeypatch.syspath_prepend(str(FIXTURES))
    work = Path(tempfile.mkdtemp(prefix="agentmesh-deadline-"))
    monkeypatch.setenv("AGENTMESH_TEST_COUNTER_FILE", str(work / "counter"))
    monkeypatch.setenv("AGENTMESH_TEST_RELEASE_FILE", str(work / "release"))
    agent = AgentSettings(graphs="agentmesh_test_agents:slow_agent", run_timeout_s=1.0)
    before = agent_runs("slow-test", "error: run_deadline")
    async with served_agent(agent) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.InvokeAgent(
                agent_pb2.InvokeAgentRequest(
                    name="agents/slow-test", parts=[common_pb2.Part(text="go")]
                ),
                metadata=tenant_a,
                timeout=30,
            )
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert agent_runs("slow-test", "error: run_deadline") == before + 1
    (work / "release").touch()
    assert (work / "counter").read_text().split() == ["first"]
