"""Idempotent runs on a thread (``RunOptions.request_id``), over real sockets: Agent
servers on the real Memory service and PostgreSQL.

- A repeat of a finished run (same key as the thread's latest run) answers its result
  again, by InvokeAgent and StreamAgent, and the graph does not run: the test agent's
  side-effect counter and the thread's checkpoints stay as they were.
- Another key, or none, runs another turn; a key older than the latest run's too.
- A run stopped at an interrupt replays that interrupt, not a second one; a repeated
  resume replays the resumed run's result instead of NO_PENDING_INTERRUPT.
- A run whose process was SIGKILLed mid-graph, repeated with its key and its input,
  continues from its last checkpoint (without the key the input is refused).
- Bad keys, and a key without a thread, are INVALID_ARGUMENT on
  ``options.request_id``; another tenant's thread stays NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest
from google.protobuf import struct_pb2

from agentmesh.agent.settings import AgentSettings
from agentmesh.core.server import RunningServer
from agentmesh.devstack._proc import ChildProcess
from agentmesh.v1 import agent_pb2, common_pb2
from component.agent_helpers import FIXTURES, AgentStub, agent_process, drain, served_agent
from component.conftest import Metadata
from component.memory_helpers import agent_runs, eventually, expect_error, field_violations, uid


async def _checkpoints(db: asyncpg.Pool, thread: str) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM memory.checkpoints WHERE tenant = $1 AND thread_id = $2",
        "tenant-a",
        thread,
    )
    return count


def _options(request_id: str) -> agent_pb2.RunOptions:
    return agent_pb2.RunOptions(request_id=request_id)


def _text(text: str) -> list[common_pb2.Part]:
    return [common_pb2.Part(text=text)]


@asynccontextmanager
async def _counting(
    monkeypatch: pytest.MonkeyPatch, memory_port: int
) -> AsyncIterator[tuple[AgentStub, Path]]:
    """An Agent server with the test agents' package (``counting-test`` among them)
    on Memory, and the side-effect counter file its runs append to."""
    monkeypatch.syspath_prepend(str(FIXTURES))
    counter = Path(tempfile.mkdtemp(prefix="agentmesh-idem-")) / "counter"
    monkeypatch.setenv("AGENTMESH_TEST_COUNTER_FILE", str(counter))
    async with served_agent(AgentSettings(), memory_port) as stub:
        yield stub, counter


def _turns(counter: Path) -> int:
    return len(counter.read_text().split()) if counter.exists() else 0


async def test_a_repeated_request_answers_the_first_result_without_running_the_graph(
    monkeypatch: pytest.MonkeyPatch,
    memory_server: RunningServer,
    db: asyncpg.Pool,
    tenant_a: Metadata,
) -> None:
    thread = f"idem-{uid()}"
    async with _counting(monkeypatch, memory_server.port) as (stub, counter):

        def invoke(request_id: str) -> agent_pb2.InvokeAgentRequest:
            return agent_pb2.InvokeAgentRequest(
                name="agents/counting-test",
                thread_id=thread,
                parts=_text("go"),
                options=_options(request_id),
            )

        first = (await stub.InvokeAgent(invoke("job:1:input"), metadata=tenant_a)).result
        assert first.status == agent_pb2.RUN_STATUS_COMPLETED
        assert [p.text for p in first.parts] == ["turn 1"]
        assert first.output["turns"] == 1
        written = await _checkpoints(db, thread)
        replayed_before = agent_runs("counting-test", "replayed")

        again = (await stub.InvokeAgent(invoke("job:1:input"), metadata=tenant_a)).result
        assert again.run_id == first.run_id
        assert again.status == agent_pb2.RUN_STATUS_COMPLETED
        assert list(again.parts) == list(first.parts)
        assert again.output == first.output
        assert again.usage.total_tokens == 0
        events = await drain(
            stub.StreamAgent(
                agent_pb2.StreamAgentRequest(
                    name="agents/counting-test",
                    thread_id=thread,
                    parts=_text("go"),
                    options=_options("job:1:input"),
                ),
                metadata=tenant_a,
            )
        )
        assert [e.WhichOneof("event") for e in events] == ["final"]
        assert events[0].sequence == 1
        assert events[0].run_id == first.run_id
        assert events[0].final.output == first.output
        assert _turns(counter) == 1  # the graph ran once
        assert await _checkpoints(db, thread) == written
        assert agent_runs("counting-test", "replayed") == replayed_before + 2

        # Another key runs another turn; so does no key, and a key that is not the
        # latest run's any more.
        other = (await stub.InvokeAgent(invoke("job:2:input"), metadata=tenant_a)).result
        assert [p.text for p in other.parts] == ["turn 2"]
        assert other.run_id != first.run_id
        unkeyed = (await stub.InvokeAgent(invoke(""), metadata=tenant_a)).result
        assert [p.text for p in unkeyed.parts] == ["turn 3"]
        older = (await stub.InvokeAgent(invoke("job:1:input"), metadata=tenant_a)).result
        assert [p.text for p in older.parts] == ["turn 4"]
        assert _turns(counter) == 4


async def test_an_interrupt_is_replayed_and_a_repeated_resume_answers_its_result(
    monkeypatch: pytest.MonkeyPatch,
    memory_server: RunningServer,
    db: asyncpg.Pool,
    tenant_a: Metadata,
    tenant_b: Metadata,
) -> None:
    thread = f"idem-{uid()}"
    action = struct_pb2.Struct()
    action.update({"action": "refund order 7"})
    start = agent_pb2.StreamAgentRequest(
        name="agents/approval", thread_id=thread, input=action, options=_options("job:7:input")
    )
    async with _counting(monkeypatch, memory_server.port) as (stub, _counter):
        first = await drain(stub.StreamAgent(start, metadata=tenant_a))
        interrupt = next(e.interrupt for e in first if e.HasField("interrupt"))
        assert first[-1].final.status == agent_pb2.RUN_STATUS_INTERRUPTED
        written = await _checkpoints(db, thread)

        again = await drain(stub.StreamAgent(start, metadata=tenant_a))
        assert [e.WhichOneof("event") for e in again] == ["interrupt", "final"]
        assert again[0].interrupt == interrupt  # the same one, not a second interrupt
        assert again[-1].final.interrupt == interrupt
        assert again[-1].final.status == agent_pb2.RUN_STATUS_INTERRUPTED
        assert again[-1].run_id == first[-1].run_id
        invoked = await stub.InvokeAgent(
            agent_pb2.InvokeAgentRequest(
                name=start.name, thread_id=thread, input=action, options=start.options
            ),
            metadata=tenant_a,
        )
        assert invoked.result.interrupt == interrupt
        assert await _checkpoints(db, thread) == written

        resume = agent_pb2.ResumeAgentRequest(
            name="agents/approval",
            thread_id=thread,
            resume=common_pb2.ResumeInput(
                interrupt_id=interrupt.id, answer=struct_pb2.Value(string_value="yes")
            ),
            options=_options(f"job:7:resume:{interrupt.id}"),
        )
        resumed = (await drain(stub.ResumeAgent(resume, metadata=tenant_a)))[-1].final
        assert resumed.status == agent_pb2.RUN_STATUS_COMPLETED
        assert [p.text for p in resumed.parts] == ["Approved: refund order 7. Done."]
        assert resumed.output["approved"] is True
        written = await _checkpoints(db, thread)

        repeated = await drain(stub.ResumeAgent(resume, metadata=tenant_a))
        assert [e.WhichOneof("event") for e in repeated] == ["final"]
        assert repeated[0].final == resumed
        assert await _checkpoints(db, thread) == written
        # Without the key, the consumed interrupt is refused as before.
        unkeyed = agent_pb2.ResumeAgentRequest()
        unkeyed.CopyFrom(resume)
        unkeyed.ClearField("options")
        await expect_error(
            drain(stub.ResumeAgent(unkeyed, metadata=tenant_a)),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        # Another tenant has no such thread, key or not; its own run is its own.
        await expect_error(
            drain(stub.ResumeAgent(resume, metadata=tenant_b)), grpc.StatusCode.NOT_FOUND
        )
        foreign = await drain(stub.StreamAgent(start, metadata=tenant_b))
        assert foreign[-1].final.status == agent_pb2.RUN_STATUS_INTERRUPTED
        assert foreign[-1].run_id not in {first[-1].run_id, resumed.run_id}


async def test_bad_request_ids_and_a_request_id_without_a_thread_are_invalid(
    monkeypatch: pytest.MonkeyPatch, memory_server: RunningServer, tenant_a: Metadata
) -> None:
    async with _counting(monkeypatch, memory_server.port) as (stub, counter):
        for bad in ("has space", "x" * 129, "é", "job/1", "a\x00b"):
            invoke = agent_pb2.InvokeAgentRequest(
                name="agents/counting-test",
                thread_id=f"idem-{uid()}",
                parts=_text("go"),
                options=_options(bad),
            )
            violations = await field_violations(stub.InvokeAgent(invoke, metadata=tenant_a))
            assert set(violations) == {"options.request_id"}, (bad, violations)
            resume = agent_pb2.ResumeAgentRequest(
                name="agents/approval",
                thread_id=f"idem-{uid()}",
                resume=common_pb2.ResumeInput(
                    interrupt_id="i", answer=struct_pb2.Value(bool_value=True)
                ),
                options=_options(bad),
            )
            violations = await field_violations(drain(stub.ResumeAgent(resume, metadata=tenant_a)))
            assert set(violations) == {"options.request_id"}, (bad, violations)
        stateless = agent_pb2.StreamAgentRequest(
            name="agents/counting-test", parts=_text("go"), options=_options("k" * 128)
        )
        violations = await field_violations(drain(stub.StreamAgent(stateless, metadata=tenant_a)))
        assert "thread_id" in violations["options.request_id"]
        assert _turns(counter) == 0


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


async def test_a_repeat_of_a_run_killed_mid_graph_continues_it_despite_its_input(
    memory_server: RunningServer, db: asyncpg.Pool, tenant_a: Metadata
) -> None:
    """What a Job worker does after its agent process died: the same call again, input
    and key; the run continues from its last checkpoint and no step runs twice."""
    work = Path(tempfile.mkdtemp(prefix="agentmesh-idem-crash-"))
    counter = work / "counter"
    thread = f"idem-crash-{uid()}"
    request = agent_pb2.InvokeAgentRequest(
        name="agents/slow-test",
        thread_id=thread,
        parts=_text("go"),
        options=_options("job:9:input"),
    )

    async def steps() -> list[str]:
        return counter.read_text().split() if counter.exists() else []

    async with _slow_process(memory_server.port, work, "agent-a") as (first, stub):
        call = asyncio.ensure_future(stub.InvokeAgent(request, metadata=tenant_a, timeout=60))

        async def first_step_checkpointed() -> bool:
            return await steps() == ["first"] and await _checkpoints(db, thread) >= 2

        await eventually(first_step_checkpointed, "the first step and its checkpoint", 30.0)
        os.kill(first.pid, signal.SIGKILL)  # mid-graph: the second step waits
        with pytest.raises(grpc.aio.AioRpcError):
            await call
        (work / "release").touch()

    async with _slow_process(memory_server.port, work, "agent-b") as (_second, stub):
        unkeyed = agent_pb2.InvokeAgentRequest()
        unkeyed.CopyFrom(request)
        unkeyed.options.request_id = "job:9:other"
        await expect_error(
            stub.InvokeAgent(unkeyed, metadata=tenant_a, timeout=30),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        continued = (await stub.InvokeAgent(request, metadata=tenant_a, timeout=30)).result
        assert continued.status == agent_pb2.RUN_STATUS_COMPLETED, continued
        assert continued.output["done"] is True
        assert [p.text for p in continued.parts] == ["both steps done"]
        assert await steps() == ["first", "second"]  # the first step did not run again

        replayed = (await stub.InvokeAgent(request, metadata=tenant_a, timeout=30)).result
    assert replayed.run_id == continued.run_id
    assert replayed.output == continued.output
    assert list(replayed.parts) == list(continued.parts)
    assert await steps() == ["first", "second"]
