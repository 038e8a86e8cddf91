"""Agent runs over real sockets: the Agent service runs LangGraph graphs whose threads
live in the real Memory service (checkpointer and store over gRPC), as the caller's
tenant. Invoke and stream, stateless and on a thread, input validation, interrupts
answered through a second Agent server, and the refusals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeAlias, TypedDict, cast

import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest
from google.protobuf import struct_pb2
from langchain_core.messages import AIMessage
from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt

from agentmesh.agent.agents import builtin_agents
from agentmesh.agent.app import build_agent
from agentmesh.agent.definition import AgentDefinition, define_agent
from agentmesh.core.server import RunningServer, start_server
from agentmesh.core.settings import Settings
from agentmesh.v1 import agent_pb2, agent_pb2_grpc, common_pb2, memory_pb2, memory_pb2_grpc
from component.conftest import SECRET, Metadata
from component.memory_helpers import agent_runs, expect_error, field_violations, uid

if TYPE_CHECKING:
    AgentStub: TypeAlias = agent_pb2_grpc.AgentServiceAsyncStub
else:
    AgentStub = agent_pb2_grpc.AgentServiceStub


class ApprovalState(TypedDict, total=False):
    action: str
    approved: bool
    output: dict[str, Any]


def _ask(state: ApprovalState) -> dict[str, Any]:
    answer = interrupt({"question": f"Approve {state.get('action', '?')}?"})
    return {"approved": bool(answer)}


def _act(state: ApprovalState) -> dict[str, Any]:
    done = "done" if state.get("approved") else "cancelled"
    return {"output": {"result": done}, "messages": [AIMessage(content=done)]}


class _ApprovalGraphState(ApprovalState, total=False):
    messages: list[Any]


def approval_agent() -> AgentDefinition:
    builder = StateGraph(_ApprovalGraphState)
    builder.add_node("ask", _ask)
    builder.add_node("act", _act)
    builder.add_edge(START, "ask")
    builder.add_edge("ask", "act")
    builder.add_edge("act", END)
    return define_agent(
        id="approval-test",
        display_name="Approval (test)",
        description="Asks a human before acting.",
        graph=builder,
        input_schema={
            "type": "object",
            "properties": {"action": {"type": "string"}},
            "required": ["action"],
        },
        interrupts=True,
    )


@asynccontextmanager
async def agent_server(memory_port: int | None) -> AsyncIterator[AgentStub]:
    environ = {
        "AGENTMESH_GRPC_PORT": "0",
        "AGENTMESH_METRICS_PORT": "0",
        "AGENTMESH_AUTH_HS256_SECRET": SECRET,
    }
    if memory_port is not None:
        environ["AGENTMESH_MEMORY_ADDR"] = f"127.0.0.1:{memory_port}"
    settings = Settings.from_env(environ, service="agent")
    definitions = [*builtin_agents(), approval_agent()]
    running = await start_server(settings, await build_agent(settings, definitions=definitions))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield cast("AgentStub", agent_pb2_grpc.AgentServiceStub(channel))
    finally:
        await running.stop(0)


@pytest.fixture
async def agent(memory_server: RunningServer) -> AsyncIterator[AgentStub]:
    async with agent_server(memory_server.port) as stub:
        yield stub


def _text(text: str) -> list[common_pb2.Part]:
    return [common_pb2.Part(text=text)]


def _struct(**values: Any) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


async def _checkpoints(db: asyncpg.Pool, tenant: str, thread_id: str | None = None) -> int:
    if thread_id is None:
        count: int = await db.fetchval(
            "SELECT count(*) FROM memory.checkpoints WHERE tenant = $1", tenant
        )
    else:
        count = await db.fetchval(
            "SELECT count(*) FROM memory.checkpoints WHERE tenant = $1 AND thread_id = $2",
            tenant,
            thread_id,
        )
    return count


async def test_a_stateless_echo_answers_and_writes_nothing(
    agent: AgentStub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    before = await _checkpoints(db, "tenant-a")
    response = await agent.InvokeAgent(
        agent_pb2.InvokeAgentRequest(name="agents/echo", parts=_text("hello there")),
        metadata=tenant_a,
    )
    result = response.result
    assert result.status == agent_pb2.RUN_STATUS_COMPLETED
    assert [p.text for p in result.parts] == ["hello there"]
    assert dict(result.output) == {"text": "hello there", "turns": 1.0}
    assert result.thread_id == ""
    assert result.run_id
    assert await _checkpoints(db, "tenant-a") == before


async def test_a_thread_continues_and_belongs_to_its_tenant(
    agent: AgentStub, tenant_a: Metadata, tenant_b: Metadata, db: asyncpg.Pool
) -> None:
    thread = f"t-{uid()}"
    turns = []
    for text in ("first", "second"):
        response = await agent.InvokeAgent(
            agent_pb2.InvokeAgentRequest(name="agents/echo", thread_id=thread, parts=_text(text)),
            metadata=tenant_a,
        )
        assert response.result.thread_id == thread
        turns.append(response.result.output["turns"])
    assert turns == [1, 2]
    assert await _checkpoints(db, "tenant-a", thread) > 0
    # The same thread id is another thread for another tenant: nothing is shared.
    other = await agent.InvokeAgent(
        agent_pb2.InvokeAgentRequest(name="agents/echo", thread_id=thread, parts=_text("b")),
        metadata=tenant_b,
    )
    assert other.result.output["turns"] == 1


async def test_structured_input_is_validated_against_the_schema_before_running(
    agent: AgentStub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    thread = f"t-{uid()}"
    violations = await field_violations(
        agent.InvokeAgent(
            agent_pb2.InvokeAgentRequest(
                name="agents/echo", thread_id=thread, input=_struct(text=5, extra="x")
            ),
            metadata=tenant_a,
        )
    )
    assert "input.text" in violations
    assert "input" in violations  # additionalProperties: false
    assert await _checkpoints(db, "tenant-a", thread) == 0
    ok = await agent.InvokeAgent(
        agent_pb2.InvokeAgentRequest(name="agents/echo", input=_struct(text="structured")),
        metadata=tenant_a,
    )
    assert ok.result.output["text"] == "structured"


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (agent_pb2.InvokeAgentRequest(name="agents/echo", thread_id="bad id!"), "thread_id"),
        (
            agent_pb2.InvokeAgentRequest(
                name="agents/echo", parts=_text("x"), options=agent_pb2.RunOptions(max_steps=-1)
            ),
            "options.max_steps",
        ),
        (
            agent_pb2.InvokeAgentRequest(name="agents/echo", parts=_text("x" * (300 * 1024))),
            "input",
        ),
        (agent_pb2.InvokeAgentRequest(name="agents/echo"), "parts"),
        (
            agent_pb2.InvokeAgentRequest(
                name="agents/echo", parts=[common_pb2.Part(blob=b"\x00\x01")]
            ),
            "parts[0].blob",
        ),
    ],
    ids=["thread-id", "max-steps", "oversize", "empty", "blob"],
)
async def test_bad_runs_are_invalid_argument(
    agent: AgentStub, tenant_a: Metadata, request_: agent_pb2.InvokeAgentRequest, field: str
) -> None:
    violations = await field_violations(agent.InvokeAgent(request_, metadata=tenant_a))
    assert field in violations, violations


async def test_an_unknown_agent_is_not_found(agent: AgentStub, tenant_a: Metadata) -> None:
    await expect_error(
        agent.InvokeAgent(
            agent_pb2.InvokeAgentRequest(name="agents/nobody", parts=_text("x")),
            metadata=tenant_a,
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_a_stream_numbers_its_events_and_ends_with_final(
    agent: AgentStub, tenant_a: Metadata
) -> None:
    for tokens in (False, True):
        events = [
            event
            async for event in agent.StreamAgent(
                agent_pb2.StreamAgentRequest(
                    name="agents/echo",
                    thread_id=f"t-{uid()}",
                    parts=_text("stream me"),
                    options=agent_pb2.RunOptions(stream_tokens=tokens),
                ),
                metadata=tenant_a,
            )
        ]
        kinds = [event.WhichOneof("event") for event in events]
        assert [event.sequence for event in events] == list(range(1, len(events) + 1))
        assert kinds[-1] == "final"
        assert "state_update" in kinds
        deltas = [e.message_delta.text for e in events if e.HasField("message_delta")]
        assert "".join(deltas) == "stream me"
        assert {e.run_id for e in events} == {events[-1].final.run_id}
        assert all(e.agent == "agents/echo" for e in events)


async def test_an_interrupt_is_answered_through_another_agent_server(
    agent: AgentStub, memory_server: RunningServer, tenant_a: Metadata
) -> None:
    thread = f"t-{uid()}"
    first = await agent.InvokeAgent(
        agent_pb2.InvokeAgentRequest(
            name="agents/approval-test", thread_id=thread, input=_struct(action="refund")
        ),
        metadata=tenant_a,
    )
    result = first.result
    assert result.status == agent_pb2.RUN_STATUS_INTERRUPTED
    pending = result.interrupt
    assert pending.id
    assert pending.value.struct_value["question"] == "Approve refund?"
    # A new input on a waiting thread is refused: it takes a resume.
    await expect_error(
        agent.InvokeAgent(
            agent_pb2.InvokeAgentRequest(
                name="agents/approval-test", thread_id=thread, input=_struct(action="x")
            ),
            metadata=tenant_a,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    async with agent_server(memory_server.port) as other:
        await expect_error(
            _drain(
                other.ResumeAgent(
                    agent_pb2.ResumeAgentRequest(
                        name="agents/approval-test",
                        thread_id=thread,
                        resume=common_pb2.ResumeInput(
                            interrupt_id="not-the-one", answer=struct_pb2.Value(bool_value=True)
                        ),
                    ),
                    metadata=tenant_a,
                )
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        events = await _drain(
            other.ResumeAgent(
                agent_pb2.ResumeAgentRequest(
                    name="agents/approval-test",
                    thread_id=thread,
                    resume=common_pb2.ResumeInput(
                        interrupt_id=pending.id, answer=struct_pb2.Value(bool_value=True)
                    ),
                ),
                metadata=tenant_a,
            )
        )
        final = events[-1].final
        assert final.status == agent_pb2.RUN_STATUS_COMPLETED
        assert final.output["result"] == "done"
        # Nothing waits any more.
        await expect_error(
            _drain(
                other.ResumeAgent(
                    agent_pb2.ResumeAgentRequest(
                        name="agents/approval-test",
                        thread_id=thread,
                        resume=common_pb2.ResumeInput(
                            interrupt_id=pending.id, answer=struct_pb2.Value(bool_value=True)
                        ),
                    ),
                    metadata=tenant_a,
                )
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
        )


async def test_resuming_an_unknown_or_foreign_thread_is_not_found(
    agent: AgentStub, tenant_a: Metadata, tenant_b: Metadata
) -> None:
    thread = f"t-{uid()}"
    first = await agent.InvokeAgent(
        agent_pb2.InvokeAgentRequest(
            name="agents/approval-test", thread_id=thread, input=_struct(action="wire")
        ),
        metadata=tenant_a,
    )
    resume = agent_pb2.ResumeAgentRequest(
        name="agents/approval-test",
        thread_id=thread,
        resume=common_pb2.ResumeInput(
            interrupt_id=first.result.interrupt.id, answer=struct_pb2.Value(bool_value=True)
        ),
    )
    await expect_error(
        _drain(agent.ResumeAgent(resume, metadata=tenant_b)), grpc.StatusCode.NOT_FOUND
    )
    resume.thread_id = f"t-{uid()}"
    await expect_error(
        _drain(agent.ResumeAgent(resume, metadata=tenant_a)), grpc.StatusCode.NOT_FOUND
    )


async def test_a_thread_of_another_agent_is_refused(agent: AgentStub, tenant_a: Metadata) -> None:
    thread = f"t-{uid()}"
    await agent.InvokeAgent(
        agent_pb2.InvokeAgentRequest(name="agents/echo", thread_id=thread, parts=_text("x")),
        metadata=tenant_a,
    )
    await expect_error(
        agent.InvokeAgent(
            agent_pb2.InvokeAgentRequest(
                name="agents/approval-test", thread_id=thread, input=_struct(action="y")
            ),
            metadata=tenant_a,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


async def test_threads_need_memory_and_stateless_runs_do_not(tenant_a: Metadata) -> None:
    async with agent_server(None) as lone:
        ok = await lone.InvokeAgent(
            agent_pb2.InvokeAgentRequest(name="agents/echo", parts=_text("offline")),
            metadata=tenant_a,
        )
        assert ok.result.parts[0].text == "offline"
        await expect_error(
            lone.InvokeAgent(
                agent_pb2.InvokeAgentRequest(name="agents/echo", thread_id="t1", parts=_text("x")),
                metadata=tenant_a,
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
        )


async def _drain(call: Any) -> list[agent_pb2.AgentEvent]:
    return [event async for event in call]


async def test_every_run_records_its_decision_in_memory(
    agent: AgentStub, memory_server: RunningServer, tenant_a: Metadata
) -> None:
    completed_before = agent_runs("calculator", "completed")
    session = f"sessions/s{uid()}"
    response = await agent.InvokeAgent(
        agent_pb2.InvokeAgentRequest(
            name="agents/calculator",
            parts=_text("6 * 7"),
            options=agent_pb2.RunOptions(session=session),
        ),
        metadata=tenant_a,
    )
    run_id = response.result.run_id
    assert agent_runs("calculator", "completed") == completed_before + 1
    async with grpc.aio.insecure_channel(f"127.0.0.1:{memory_server.port}") as channel:
        memory = cast("Any", memory_pb2_grpc.MemoryServiceStub(channel))
        found: list[Any] = []
        for _ in range(100):  # written in the background: bounded wait, ~10 s at most
            listed = await memory.ListDecisions(
                memory_pb2.ListDecisionsRequest(filter=f'session = "{session}"'),
                metadata=tenant_a,
            )
            found = list(listed.decisions)
            if found:
                break
            await asyncio.sleep(0.1)
    (decision,) = found
    assert decision.agent == "agents/calculator"
    assert decision.outcome == "completed"
    assert list(decision.tools) == ["calculator"]
    assert decision.input_summary == "6 * 7"
    assert decision.metadata["run_id"] == run_id
    assert decision.latency.ToNanoseconds() > 0
