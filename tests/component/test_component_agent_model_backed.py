"""Agents that use the deployment: recall answers from the caller's memories in the
real Memory service; the assistant is listed always, refuses to run with no model
(naming the setting), and with a model runs the real OpenAI client against a local
server speaking the chat-completions protocol: a tool call, the tool's result, the
answer, and the tokens counted. The summarizer writes an abstractive summary through the
structured-output helper with a model, and extracts one without (or when asked)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeAlias, cast

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from agentmesh.agent.app import build_agent
from agentmesh.core.server import RunningServer, start_server
from agentmesh.core.settings import Settings
from agentmesh.llm.settings import LlmSettings
from agentmesh.v1 import agent_pb2, agent_pb2_grpc, common_pb2, memory_pb2
from component.conftest import SECRET, Backends, Metadata, credentials
from component.memory_helpers import Stub, expect_error, expect_invalid, struct, uid
from providers import openai_wire
from providers.server import ScriptedServer, serving

if TYPE_CHECKING:
    AgentStub: TypeAlias = agent_pb2_grpc.AgentServiceAsyncStub
else:
    AgentStub = agent_pb2_grpc.AgentServiceStub


@asynccontextmanager
async def _agent(
    memory_port: int, llm: LlmSettings, redis_url: str | None = None
) -> AsyncIterator[AgentStub]:
    environ = {
        "AGENTMESH_GRPC_PORT": "0",
        "AGENTMESH_METRICS_PORT": "0",
        "AGENTMESH_AUTH_HS256_SECRET": SECRET,
        "AGENTMESH_MEMORY_ADDR": f"127.0.0.1:{memory_port}",
    }
    if redis_url is not None:
        environ["AGENTMESH_REDIS_URL"] = redis_url
    settings = Settings.from_env(environ, service="agent")
    running = await start_server(settings, await build_agent(settings, None, llm))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield cast("AgentStub", agent_pb2_grpc.AgentServiceStub(channel))
    finally:
        await running.stop(0)


@pytest.fixture
def provider() -> Iterator[ScriptedServer]:
    with serving() as scripted:
        yield scripted


def _text(text: str) -> list[common_pb2.Part]:
    return [common_pb2.Part(text=text)]


async def test_recall_answers_from_the_callers_memories(
    memory_server: RunningServer, memory: Stub
) -> None:
    tenant: Metadata = credentials(f"recall-{uid()}")
    for content in ("Loves green curry and Thai food", "Flies from Lisbon every March"):
        await memory.CreateMemory(
            memory_pb2.CreateMemoryRequest(
                memory=memory_pb2.Memory(namespace="users/me/facts", content=content)
            ),
            metadata=tenant,
        )
    async with _agent(memory_server.port, LlmSettings()) as agent:
        response = await agent.InvokeAgent(
            agent_pb2.InvokeAgentRequest(name="agents/recall", parts=_text("Thai food")),
            metadata=tenant,
        )
        hits = response.result.output["memories"]
        assert hits[0]["content"] == "Loves green curry and Thai food"  # type: ignore[index]
        # Another tenant remembers nothing of it.
        other = await agent.InvokeAgent(
            agent_pb2.InvokeAgentRequest(name="agents/recall", parts=_text("Thai food")),
            metadata=credentials(f"recall-{uid()}"),
        )
        assert list(other.result.output["memories"]) == []  # type: ignore[arg-type]


async def test_the_assistant_without_a_model_names_the_setting(
    memory_server: RunningServer, tenant_a: Metadata
) -> None:
    async with _agent(memory_server.port, LlmSettings()) as agent:
        card = await agent.GetAgent(
            agent_pb2.GetAgentRequest(name="agents/assistant"), metadata=tenant_a
        )
        assert card.labels["llm"] == "true"
        error = await expect_error(
            agent.InvokeAgent(
                agent_pb2.InvokeAgentRequest(name="agents/assistant", parts=_text("hi")),
                metadata=tenant_a,
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        assert "AGENTMESH_LLM_DEFAULT_MODEL" in (error.details() or "")
        status = rpc_status.from_call(cast("grpc.Call", error))
        assert status is not None
        failure = error_details_pb2.PreconditionFailure()
        assert any(d.Unpack(failure) for d in status.details)
        assert failure.violations[0].subject == "AGENTMESH_LLM_DEFAULT_MODEL"


async def test_the_assistant_calls_a_tool_through_a_real_provider_client(
    memory_server: RunningServer, tenant_a: Metadata, provider: ScriptedServer
) -> None:
    provider.script(
        openai_wire.completion(
            None, tool_calls=[("call-1", "calculator", {"expression": "15 * 240 / 100"})]
        ),
        openai_wire.completion("15% of 240 is 36."),
    )
    llm = LlmSettings(
        default_model="openai:gpt-4.1-mini",
        openai_base_url=provider.url + "/v1",
        openai_api_key="test-key",
    )
    async with _agent(memory_server.port, llm) as agent:
        events = [
            event
            async for event in agent.StreamAgent(
                agent_pb2.StreamAgentRequest(
                    name="agents/assistant",
                    thread_id=f"t-{uid()}",
                    parts=_text("How much is 15% of 240?"),
                ),
                metadata=tenant_a,
            )
        ]
    calls = [e.tool_call for e in events if e.HasField("tool_call")]
    results = [e.tool_result for e in events if e.HasField("tool_result")]
    assert calls[0].tool == "calculator"
    assert results[0].parts[0].text == "36"
    final = events[-1].final
    assert final.parts[0].text == "15% of 240 is 36."
    assert final.usage.total_tokens == 2 * (11 + 7)  # both model calls counted
    usage_events = [e for e in events if e.HasField("usage")]
    assert usage_events[-1].usage.input_tokens == 22
    # The second request carried the tool's result back to the model.
    second = provider.requests[1].json()
    assert any(m.get("role") == "tool" and m.get("content") == "36" for m in second["messages"])


async def test_the_response_cache_answers_a_repeated_prompt_without_the_provider(
    memory_server: RunningServer, backends: Backends, provider: ScriptedServer
) -> None:
    provider.script(openai_wire.completion("Hello from the model."))
    llm = LlmSettings(
        default_model="openai:gpt-4.1-mini",
        openai_base_url=provider.url + "/v1",
        openai_api_key="test-key",
        cache_ttl_s=60,
    )
    tenant = credentials(f"cache-{uid()}")
    prompt = f"say hello {uid()}"  # a prompt no earlier test cached
    hits = REGISTRY.get_sample_value("agentmesh_llm_cache_lookups_total", {"result": "hit"}) or 0
    async with _agent(memory_server.port, llm, backends.redis_url) as agent:
        answers = [
            await agent.InvokeAgent(
                agent_pb2.InvokeAgentRequest(name="agents/assistant", parts=_text(prompt)),
                metadata=tenant,
            )
            for _ in range(2)
        ]
    assert [a.result.parts[0].text for a in answers] == ["Hello from the model."] * 2
    assert len(provider.requests) == 1  # the second answer came from the cache
    assert answers[0].result.usage.total_tokens == 18
    assert answers[1].result.usage.total_tokens == 0  # a hit spends no tokens
    after = REGISTRY.get_sample_value("agentmesh_llm_cache_lookups_total", {"result": "hit"})
    assert after == hits + 1


TEXT = (
    "The council approved the new tram line on Monday. Construction starts in May and"
    " takes two years. The line links the harbour to the university. Critics worry about"
    " the cost. Supporters expect fewer cars downtown."
)


async def test_the_summarizer_writes_an_abstractive_summary_with_a_model(
    memory_server: RunningServer, tenant_a: Metadata, provider: ScriptedServer
) -> None:
    provider.script(
        openai_wire.completion(
            '```json\n{"summary": "A two-year tram build linking harbour and university'
            ' starts in May."}\n```'
        )
    )
    # No default model: the request names one.
    llm = LlmSettings(openai_base_url=provider.url + "/v1", openai_api_key="test-key")
    async with _agent(memory_server.port, llm) as agent:
        response = await agent.InvokeAgent(
            agent_pb2.InvokeAgentRequest(
                name="agents/summarizer",
                input=struct(text=TEXT, sentences=1),
                options=agent_pb2.RunOptions(model="openai:gpt-4.1-mini"),
            ),
            metadata=tenant_a,
        )
    result = response.result
    summary = "A two-year tram build linking harbour and university starts in May."
    assert dict(result.output) == {"summary": summary, "method": "abstractive"}
    assert result.parts[0].text == summary
    assert result.usage.total_tokens == 18
    sent = provider.requests[0].json()
    assert sent["model"] == "gpt-4.1-mini"
    system, user = sent["messages"]
    assert "at most 1 sentences" in system["content"]
    assert '"summary"' in system["content"]  # the schema it must answer
    assert user == {"role": "user", "content": TEXT}


async def test_the_summarizer_extracts_without_a_model_or_when_asked(
    memory_server: RunningServer, tenant_a: Metadata, provider: ScriptedServer
) -> None:
    with_model = LlmSettings(
        default_model="openai:gpt-4.1-mini",
        openai_base_url=provider.url + "/v1",
        openai_api_key="test-key",
    )
    for llm, method in ((LlmSettings(), {}), (with_model, {"method": "extractive"})):
        async with _agent(memory_server.port, llm) as agent:
            response = await agent.InvokeAgent(
                agent_pb2.InvokeAgentRequest(
                    name="agents/summarizer", input=struct(text=TEXT, sentences=2, **method)
                ),
                metadata=tenant_a,
            )
        assert response.result.output["method"] == "extractive"
        assert len(str(response.result.output["summary"])) < len(TEXT)
    assert provider.requests == []  # no model was asked


async def test_an_abstractive_summary_without_a_model_names_the_setting(
    memory_server: RunningServer, tenant_a: Metadata
) -> None:
    async with _agent(memory_server.port, LlmSettings()) as agent:
        card = await agent.GetAgent(
            agent_pb2.GetAgentRequest(name="agents/summarizer"), metadata=tenant_a
        )
        response = await agent.InvokeAgent(
            agent_pb2.InvokeAgentRequest(
                name="agents/summarizer", input=struct(text=TEXT, method="abstractive")
            ),
            metadata=tenant_a,
        )
        await expect_invalid(
            agent.InvokeAgent(
                agent_pb2.InvokeAgentRequest(
                    name="agents/summarizer", input=struct(text=TEXT, method="poetic")
                ),
                metadata=tenant_a,
            ),
            "input.method",
        )
    assert "AGENTMESH_LLM_DEFAULT_MODEL" in card.description
    error = response.result.error
    assert response.result.status == agent_pb2.RUN_STATUS_FAILED
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "AGENTMESH_LLM_DEFAULT_MODEL" in error.message
    failure = error_details_pb2.PreconditionFailure()
    assert any(detail.Unpack(failure) for detail in error.details)
    assert failure.violations[0].subject == "AGENTMESH_LLM_DEFAULT_MODEL"


async def test_the_assistant_keeps_artifacts_in_the_callers_tenant(
    memory_server: RunningServer, memory: Stub, provider: ScriptedServer
) -> None:
    provider.script(
        openai_wire.completion(
            None,
            tool_calls=[
                (
                    "call-1",
                    "artifacts",
                    {"action": "save", "name": "trip-plan", "content": "Day 1: Lisbon"},
                ),
                ("call-2", "artifacts", {"action": "save", "name": "Trip Plan!", "content": "x"}),
                (
                    "call-3",
                    "artifacts",
                    {"action": "save", "name": "big", "content": "é" * 200_000},
                ),
            ],
        ),
        openai_wire.completion(
            None,
            tool_calls=[
                ("call-4", "artifacts", {"action": "read", "name": "trip-plan"}),
                ("call-5", "artifacts", {"action": "list"}),
                ("call-6", "artifacts", {"action": "delete", "name": "trip-plan"}),
            ],
        ),
        openai_wire.completion("Saved your trip plan as trip-plan."),
    )
    llm = LlmSettings(
        default_model="openai:gpt-4.1-mini",
        openai_base_url=provider.url + "/v1",
        openai_api_key="test-key",
    )
    tenant = credentials(f"artifacts-{uid()}")
    async with _agent(memory_server.port, llm) as agent:
        response = await agent.InvokeAgent(
            agent_pb2.InvokeAgentRequest(
                name="agents/assistant", parts=_text("Keep my trip plan: Day 1: Lisbon")
            ),
            metadata=tenant,
        )
    assert response.result.status == agent_pb2.RUN_STATUS_COMPLETED
    assert response.result.parts[0].text == "Saved your trip plan as trip-plan."
    # The artifact is in Memory, for this tenant only.
    saved = await memory.GetArtifact(
        memory_pb2.GetArtifactRequest(name="artifacts/trip-plan"), metadata=tenant
    )
    assert (saved.text, saved.media_type, saved.version) == ("Day 1: Lisbon", "text/plain", 1)
    await expect_error(
        memory.GetArtifact(
            memory_pb2.GetArtifactRequest(name="artifacts/trip-plan"),
            metadata=credentials(f"artifacts-{uid()}"),
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    # The model's follow-ups got the tool results; its bad arguments came back as errors.
    answers = {
        m["tool_call_id"]: m["content"]
        for request in provider.requests[1:]
        for m in request.json()["messages"]
        if m.get("role") == "tool"
    }
    assert answers["call-1"] == "saved artifacts/trip-plan version 1 (13 bytes)"
    assert answers["call-2"].startswith("error: name: id 'Trip Plan!' must be 1-63 characters")
    assert answers["call-3"] == "error: content: larger than 262144 bytes"
    assert (
        answers["call-4"] == "artifacts/trip-plan version 1 (text/plain, 13 bytes):\nDay 1: Lisbon"
    )
    assert answers["call-5"] == "- artifacts/trip-plan version 1 (text/plain, 13 bytes)"
    assert "action" in answers["call-6"]  # not an action of the tool: told, not crashed
    listed = await memory.ListArtifacts(memory_pb2.ListArtifactsRequest(), metadata=tenant)
    assert [a.name for a in listed.artifacts] == ["artifacts/trip-plan"]
