"""Structured output over gRPC: an agent declared with the structured-output helper
answers JSON valid against its card's output schema in ``RunResult.output``, through
the real OpenAI client against a local server speaking chat completions. A fenced
answer is taken; an invalid answer goes back to the model with the validation errors;
answers that stay invalid end the run FAILED_PRECONDITION with the problems."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from prometheus_client import REGISTRY

from agentmesh.agent.agents.structured import structured_agent
from agentmesh.agent.app import build_agent
from agentmesh.agent.resources import AgentResources
from agentmesh.agent.settings import AgentSettings
from agentmesh.core.server import start_server
from agentmesh.core.settings import Settings
from agentmesh.llm.models import ChatModels
from agentmesh.llm.settings import LlmSettings
from agentmesh.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from component.agent_helpers import FIXTURES
from component.conftest import SECRET, Metadata
from providers import openai_wire
from providers.server import ScriptedServer, serving

if TYPE_CHECKING:
    AgentStub: TypeAlias = agent_pb2_grpc.AgentServiceAsyncStub
else:
    AgentStub = agent_pb2_grpc.AgentServiceStub

CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1},
        "population": {"type": "integer", "minimum": 0},
    },
    "required": ["city", "population"],
    "additionalProperties": False,
}


@pytest.fixture
def provider() -> Iterator[ScriptedServer]:
    with serving() as scripted:
        yield scripted


@asynccontextmanager
async def _agent(provider: ScriptedServer, attempts: int = 3) -> AsyncIterator[AgentStub]:
    """The Agent service serving one structured agent, its model at ``provider``."""
    llm = LlmSettings(
        default_model="openai:gpt-4.1-mini",
        openai_base_url=provider.url + "/v1",
        openai_api_key="test-key",
        structured_attempts=attempts,
    )
    resources = AgentResources(llm=llm, models=ChatModels(llm), memory=None)
    definition = structured_agent(
        resources,
        id="city-facts",
        display_name="City facts",
        description="Names the largest city of a country, with its population.",
        output_schema=CITY,
        instructions="You know geography.",
    )
    environ = {
        "AGENTMESH_GRPC_PORT": "0",
        "AGENTMESH_METRICS_PORT": "0",
        "AGENTMESH_AUTH_HS256_SECRET": SECRET,
    }
    settings = Settings.from_env(environ, service="agent")
    running = await start_server(
        settings, await build_agent(settings, None, llm, definitions=[definition])
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield cast("AgentStub", agent_pb2_grpc.AgentServiceStub(channel))
    finally:
        await running.stop(0)


def _ask(text: str) -> agent_pb2.InvokeAgentRequest:
    return agent_pb2.InvokeAgentRequest(
        name="agents/city-facts", parts=[common_pb2.Part(text=text)]
    )


def _output(result: agent_pb2.RunResult) -> dict[str, Any]:
    return json_format.MessageToDict(result.output)


async def test_a_fenced_answer_is_the_validated_output(
    provider: ScriptedServer, tenant_a: Metadata
) -> None:
    answer = {"city": "Lagos", "population": 15_300_000}
    provider.script(openai_wire.completion(f"Here it is:\n```json\n{json.dumps(answer)}\n```"))
    async with _agent(provider) as agent:
        card = await agent.GetAgent(
            agent_pb2.GetAgentRequest(name="agents/city-facts"), metadata=tenant_a
        )
        response = await agent.InvokeAgent(_ask("Nigeria?"), metadata=tenant_a)
    assert json_format.MessageToDict(card.output_schema)["required"] == ["city", "population"]
    assert _output(response.result) == {"city": "Lagos", "population": 15300000}
    assert json.loads(response.result.parts[0].text) == answer
    assert response.result.usage.total_tokens == 18
    # The model was told the card's schema, after the agent's instructions.
    system = provider.requests[0].json()["messages"][0]
    assert system["role"] == "system"
    assert system["content"].startswith("You know geography.")
    assert '"population"' in system["content"]


async def test_an_invalid_answer_goes_back_with_the_validation_error(
    provider: ScriptedServer, tenant_a: Metadata
) -> None:
    # Token streaming asked: the client streams, so the server answers in SSE pieces.
    provider.script(
        openai_wire.stream(['{"city": "Lisbon", ', '"population": "about 545k"}']),
        openai_wire.stream(['{"city": "Lisbon", ', '"population": 545000}']),
    )
    async with _agent(provider) as agent:
        events = [
            event
            async for event in agent.StreamAgent(
                agent_pb2.StreamAgentRequest(
                    name="agents/city-facts",
                    parts=[common_pb2.Part(text="Portugal?")],
                    options=agent_pb2.RunOptions(stream_tokens=True),
                ),
                metadata=tenant_a,
            )
        ]
    final = events[-1].final
    assert _output(final) == {"city": "Lisbon", "population": 545000}
    assert final.usage.total_tokens == 2 * 18  # both attempts counted
    assert len(provider.requests) == 2
    second = provider.requests[1].json()["messages"]
    assert second[-2] == {
        "role": "assistant",
        "content": '{"city": "Lisbon", "population": "about 545k"}',
    }
    feedback = second[-1]
    assert feedback["role"] == "user"
    assert "at $.population: 'about 545k' is not of type 'integer'" in feedback["content"]
    # The rejected attempt never reached the client as text.
    deltas = [e.message_delta.text for e in events if e.HasField("message_delta")]
    assert not any("about 545k" in text for text in deltas)


async def test_answers_that_stay_invalid_are_failed_precondition(
    provider: ScriptedServer, tenant_a: Metadata
) -> None:
    provider.script(
        openai_wire.completion("I would rather not say."),
        openai_wire.completion('{"city": ""}'),
        openai_wire.completion('{"city": "never asked"}'),  # a third call would take it
    )

    def spent() -> float:
        return sum(
            REGISTRY.get_sample_value(
                "agentmesh_llm_tokens_total",
                {
                    "tenant": "tenant-a",
                    "agent": "city-facts",
                    "model": "openai:gpt-4.1-mini",
                    "direction": d,
                },
            )
            or 0.0
            for d in ("input", "output")
        )

    before = spent()
    async with _agent(provider, attempts=2) as agent:
        response = await agent.InvokeAgent(_ask("Atlantis?"), metadata=tenant_a)
    assert len(provider.requests) == 2  # the configured attempts, no more
    # The failed run's tokens count (against the tenant's budget too): both calls.
    assert spent() - before == 2 * 18
    # A run that fails after it started is a FAILED result carrying the error's status.
    result = response.result
    assert result.status == agent_pb2.RUN_STATUS_FAILED
    assert result.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "after 2 attempt(s)" in result.error.message
    info = error_details_pb2.ErrorInfo()
    failure = error_details_pb2.PreconditionFailure()
    assert any(detail.Unpack(info) for detail in result.error.details)
    assert info.reason == "MODEL_OUTPUT_INVALID"
    assert any(detail.Unpack(failure) for detail in result.error.details)
    problems = {(v.type, v.subject, v.description) for v in failure.violations}
    assert problems == {
        ("MODEL_OUTPUT", "output", "at $: 'population' is a required property"),
        ("MODEL_OUTPUT", "output", "at $.city: '' should be non-empty"),
    }


async def test_an_agent_from_a_package_gets_the_deployments_model(
    provider: ScriptedServer, tenant_a: Metadata, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(FIXTURES))
    provider.script(openai_wire.completion('{"city": "Lisbon", "population": 545000}'))
    llm = LlmSettings(
        default_model="openai:gpt-4.1-mini",
        openai_base_url=provider.url + "/v1",
        openai_api_key="test-key",
    )
    environ = {
        "AGENTMESH_GRPC_PORT": "0",
        "AGENTMESH_METRICS_PORT": "0",
        "AGENTMESH_AUTH_HS256_SECRET": SECRET,
    }
    settings = Settings.from_env(environ, service="agent")
    agent_settings = AgentSettings(graphs="agentmesh_test_agents:city_facts")
    running = await start_server(settings, await build_agent(settings, agent_settings, llm))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = cast("AgentStub", agent_pb2_grpc.AgentServiceStub(channel))
            response = await stub.InvokeAgent(
                agent_pb2.InvokeAgentRequest(
                    name="agents/city-facts-pkg", parts=[common_pb2.Part(text="Portugal?")]
                ),
                metadata=tenant_a,
            )
    finally:
        await running.stop(0)
    assert _output(response.result) == {"city": "Lisbon", "population": 545000}
