"""Human-in-the-loop across OS processes: the built-in ``agents/approval`` pauses on
an interrupt in one ``python -m agentmesh.agent`` process, which is then stopped
(SIGTERM, by PID: it drains and exits); a second, separate process takes the human's
answer from the thread in the real Memory service and finishes the run. The second
process refuses a resume with the wrong interrupt id (FAILED_PRECONDITION) and another
tenant's resume (NOT_FOUND), and the run's decisions are in Memory."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2

from agentmesh.core.server import RunningServer
from agentmesh.v1 import agent_pb2, common_pb2, memory_pb2, memory_pb2_grpc
from component.agent_helpers import agent_process, drain
from component.conftest import Metadata
from component.memory_helpers import eventually, expect_error, struct, uid


def _resume(thread: str, interrupt_id: str, session: str) -> agent_pb2.ResumeAgentRequest:
    return agent_pb2.ResumeAgentRequest(
        name="agents/approval",
        thread_id=thread,
        resume=common_pb2.ResumeInput(
            interrupt_id=interrupt_id, answer=struct_pb2.Value(string_value="yes")
        ),
        options=agent_pb2.RunOptions(session=session),
    )


async def test_an_interrupt_raised_in_one_process_is_answered_in_another(
    memory_server: RunningServer,
    memory: memory_pb2_grpc.MemoryServiceAsyncStub,
    tenant_a: Metadata,
    tenant_b: Metadata,
    tmp_path: Path,
) -> None:
    work = tmp_path
    thread = f"hitl-{uid()}"
    session = f"sessions/hitl-{uid()}"
    async with agent_process(memory_server.port, work, "agent-asks") as (first, stub):
        response = await stub.InvokeAgent(
            agent_pb2.InvokeAgentRequest(
                name="agents/approval",
                thread_id=thread,
                input=struct(action="refund order 1234"),
                options=agent_pb2.RunOptions(session=session),
            ),
            metadata=tenant_a,
            timeout=30,
        )
        asked = response.result
        assert asked.status == agent_pb2.RUN_STATUS_INTERRUPTED, asked
        pending = asked.interrupt
        assert pending.id
        assert pending.value.struct_value["question"] == "Approve: refund order 1234?"
        os.kill(first.pid, signal.SIGTERM)

        async def exited() -> bool:
            return first.returncode() is not None

        await eventually(exited, "the first process to drain and exit", 30.0)
        assert first.returncode() == 0, first.log_tail()

    async with agent_process(memory_server.port, work, "agent-answers") as (second, stub):
        assert second.pid != first.pid
        wrong = await expect_error(
            drain(stub.ResumeAgent(_resume(thread, "not-the-one", session), metadata=tenant_a)),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        assert pending.id in (wrong.details() or "")  # names the interrupt that waits
        await expect_error(
            drain(stub.ResumeAgent(_resume(thread, pending.id, session), metadata=tenant_b)),
            grpc.StatusCode.NOT_FOUND,
        )
        events = await drain(
            stub.ResumeAgent(_resume(thread, pending.id, session), metadata=tenant_a, timeout=30)
        )
    done = events[-1].final
    assert done.status == agent_pb2.RUN_STATUS_COMPLETED, done
    assert done.thread_id == thread
    assert done.parts[0].text == "Approved: refund order 1234. Done."
    assert done.output["approved"] is True
    assert done.output["action"] == "refund order 1234"

    found: dict[str, Any] = {}

    async def both_decisions() -> bool:
        listed = await memory.ListDecisions(
            memory_pb2.ListDecisionsRequest(filter=f'session = "{session}"'), metadata=tenant_a
        )
        found.clear()
        found.update({str(d.metadata["run_id"]): d for d in listed.decisions})
        return len(found) >= 2

    await eventually(both_decisions, "the two runs' decisions in Memory", 30.0)
    assert set(found) == {asked.run_id, done.run_id}
    decided = found[done.run_id]
    assert decided.agent == "agents/approval"
    assert decided.outcome == "completed"
    assert decided.metadata["thread_id"] == thread
    assert found[asked.run_id].outcome == "interrupted"
    # The other tenant sees none of it.
    foreign = await memory.ListDecisions(
        memory_pb2.ListDecisionsRequest(filter=f'session = "{session}"'), metadata=tenant_b
    )
    assert list(foreign.decisions) == []
