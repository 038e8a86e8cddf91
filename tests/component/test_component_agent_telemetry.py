"""A run names itself on the call's span and on every log line it writes, over real
gRPC: the server span of InvokeAgent / StreamAgent carries ``agentmesh.agent``,
``agentmesh.run_id`` and ``agentmesh.thread_id``, and a log line written inside the
graph's nodes (a sync node runs in a worker thread, an async one in a task) carries
``agent``, ``run_id``, ``thread_id``, the tenant and the span's trace id; all equal
to what the run's result says.

Spans are recorded by an OpenTelemetry SDK TracerProvider of the test with an
in-memory exporter: the process-wide provider can be set only once, so the server's
interceptor is given the test's tracer. Log lines are the project's JSON lines
(``configure_logging``) written to a buffer."""

from __future__ import annotations

import asyncio
import functools
import io
import json
import logging
from collections.abc import Iterator
from typing import Annotated, Any, TypedDict

import pytest
import structlog
from langchain_core.messages import AIMessage, AnyMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentmesh.agent.definition import AgentDefinition, define_agent
from agentmesh.agent.settings import AgentSettings
from agentmesh.core.interceptors import ServerInterceptor
from agentmesh.core.logging import configure_logging
from agentmesh.core.server import RunningServer
from agentmesh.core.settings import Settings
from agentmesh.v1 import agent_pb2, common_pb2
from component.agent_helpers import drain, served_agent
from component.conftest import Metadata
from component.memory_helpers import uid

AGENT = "telemetry-test"


class _State(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]


def _plan(state: _State) -> dict[str, Any]:
    structlog.get_logger("test.agent").info("planning", node="plan")
    return {}


async def _answer(state: _State) -> dict[str, Any]:
    await asyncio.sleep(0)
    structlog.get_logger("test.agent").info("answering", node="answer")
    return {"messages": [AIMessage(content="logged")]}


def _logging_agent() -> AgentDefinition:
    builder = StateGraph(_State)
    builder.add_node("plan", _plan)
    builder.add_node("answer", _answer)
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "answer")
    builder.add_edge("answer", END)
    return define_agent(
        id=AGENT, display_name="Telemetry (test)", description="Logs in its nodes.", graph=builder
    )


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The project's JSON log lines into a buffer; the previous configuration after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    buffer = io.StringIO()
    configure_logging(
        Settings.from_env({"AGENTMESH_LOG_LEVEL": "info"}, service="agent"), stream=buffer
    )
    try:
        yield buffer
    finally:
        structlog.configure(**config)
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Spans of the servers started in the test, recorded in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(
        "agentmesh.core.server.ServerInterceptor",
        functools.partial(ServerInterceptor, tracer=provider.get_tracer("test")),
    )
    try:
        yield exporter
    finally:
        provider.shutdown()


def _call_span(exporter: InMemorySpanExporter, method: str, run_id: str) -> ReadableSpan:
    (span,) = [
        s
        for s in exporter.get_finished_spans()
        if s.name == f"agentmesh.v1.AgentService/{method}"
        and (s.attributes or {}).get("agentmesh.run_id") == run_id
    ]
    return span


def _run_lines(buffer: io.StringIO, run_id: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    return [line for line in lines if line.get("run_id") == run_id]


async def test_the_calls_span_and_the_runs_log_lines_name_the_run_and_thread(
    memory_server: RunningServer,
    tenant_a: Metadata,
    log_lines: io.StringIO,
    spans: InMemorySpanExporter,
) -> None:
    thread = f"telemetry-{uid()}"
    async with served_agent(
        AgentSettings(), memory_server.port, definitions=[_logging_agent()]
    ) as stub:
        invoked = await stub.InvokeAgent(
            agent_pb2.InvokeAgentRequest(
                name=f"agents/{AGENT}", thread_id=thread, parts=[common_pb2.Part(text="one")]
            ),
            metadata=tenant_a,
            timeout=30,
        )
        streamed = await drain(
            stub.StreamAgent(
                agent_pb2.StreamAgentRequest(
                    name=f"agents/{AGENT}", thread_id=thread, parts=[common_pb2.Part(text="two")]
                ),
                metadata=tenant_a,
                timeout=30,
            )
        )
    runs = [("InvokeAgent", invoked.result), ("StreamAgent", streamed[-1].final)]
    assert invoked.result.run_id != streamed[-1].final.run_id  # one run per call
    for method, result in runs:
        assert result.status == agent_pb2.RUN_STATUS_COMPLETED
        assert result.thread_id == thread
        span = _call_span(spans, method, result.run_id)
        attributes = dict(span.attributes or {})
        assert attributes["agentmesh.agent"] == AGENT
        assert attributes["agentmesh.thread_id"] == thread
        assert attributes["rpc.grpc.status_code"] == 0
        lines = _run_lines(log_lines, result.run_id)
        assert sorted(line["event"] for line in lines) == ["answering", "planning"]
        for line in lines:
            assert line["agent"] == AGENT
            assert line["thread_id"] == thread
            assert line["tenant"] == "tenant-a"
            assert line["trace_id"] == format(span.context.trace_id, "032x")
    # Every event of the stream names the same run and thread.
    assert {(e.run_id, e.thread_id) for e in streamed} == {(streamed[-1].final.run_id, thread)}
