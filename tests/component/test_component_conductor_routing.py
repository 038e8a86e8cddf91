"""Routing a turn that names no agent, over real sockets with real Memory (the offline
``hash`` embedder, through EmbedTexts) and Agent services: similarity sends arithmetic
to the calculator, "summarize" to the summarizer and a question about what the user
said to recall; below the threshold the default agent answers; with a model the
supervisor picks (the real OpenAI client against a scripted server), and similarity
decides when the model fails. Every decision, with its candidates and scores, is in
Memory's audit trail, visible to its tenant only."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import grpc
import pytest

from agentmesh.conductor.app import build_conductor
from agentmesh.conductor.settings import ConductorSettings
from agentmesh.core.server import RunningServer, start_server
from agentmesh.core.settings import Settings
from agentmesh.llm.settings import LlmSettings
from agentmesh.v1 import conductor_pb2, conductor_pb2_grpc, memory_pb2
from component.conductor_helpers import ConductorStub, converse, kinds, text
from component.conftest import SECRET, Backends, Metadata, credentials
from component.job_helpers import serve_agent
from component.memory_helpers import Stub, uid
from providers import openai_wire
from providers.server import ScriptedServer, serving


@contextlib.asynccontextmanager
async def _conductor(
    backends: Backends, memory_port: int, agent_port: int, **overrides: str
) -> AsyncIterator[ConductorStub]:
    """A Conductor with ``overrides``, its LLM settings read from them too."""
    environ = {
        "AGENTMESH_GRPC_PORT": "0",
        "AGENTMESH_METRICS_PORT": "0",
        "AGENTMESH_AUTH_HS256_SECRET": SECRET,
        "AGENTMESH_DATABASE_URL": backends.conductor_url,
        "AGENTMESH_REDIS_URL": backends.redis_url,
        "AGENTMESH_MEMORY_ADDR": f"127.0.0.1:{memory_port}",
        "AGENTMESH_AGENT_ADDR": f"127.0.0.1:{agent_port}",
        "AGENTMESH_CONDUCTOR_WATCH_POLL_S": "0.5",
        **overrides,
    }
    settings = Settings.from_env(environ, service="conductor")
    spec = await build_conductor(
        settings, ConductorSettings.from_env(environ), LlmSettings.from_env(environ)
    )
    running = await start_server(settings, spec)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield cast("ConductorStub", conductor_pb2_grpc.ConductorServiceStub(channel))
    finally:
        await running.stop(0)


@pytest.fixture(scope="module")
async def agent_server(
    memory_server: RunningServer, backends: Backends
) -> AsyncIterator[RunningServer]:
    async with serve_agent(memory_server.port, backends.redis_url) as running:
        yield running


@pytest.fixture(scope="module")
async def conductor(
    backends: Backends, memory_server: RunningServer, agent_server: RunningServer
) -> AsyncIterator[ConductorStub]:
    async with _conductor(
        backends,
        memory_server.port,
        agent_server.port,
        AGENTMESH_CONDUCTOR_DEFAULT_AGENT="echo",
    ) as stub:
        yield stub


@pytest.fixture
def provider() -> Iterator[ScriptedServer]:
    with serving() as scripted:
        yield scripted


async def _turn(
    stub: ConductorStub, tenant: Metadata, message: str
) -> tuple[str, conductor_pb2.RoutingDecision, list[conductor_pb2.ConverseEvent]]:
    session = f"sessions/route-{uid()}"
    events = await converse(stub, tenant, session=session, create_session=True, parts=text(message))
    assert events[0].WhichOneof("event") == "routing", kinds(events)
    assert kinds(events)[-1] == "final", kinds(events)
    return session, events[0].routing, events


async def _decisions(memory: Stub, session: str, tenant: Metadata) -> list[memory_pb2.Decision]:
    response = await memory.ListDecisions(
        memory_pb2.ListDecisionsRequest(filter=f'session = "{session}"', page_size=100),
        metadata=tenant,
    )
    return [d for d in response.decisions if d.metadata.fields["by"].string_value == "conductor"]


@pytest.mark.parametrize(
    ("message", "agent"),
    [
        ("what is 17 * 23", "agents/calculator"),
        (
            "summarize these notes: The meeting covered the budget. We agreed to hire two"
            " engineers. The launch moves to May.",
            "agents/summarizer",
        ),
        ("what did I tell you about my trip", "agents/recall"),
    ],
)
async def test_similarity_routes_the_offline_agents_and_records_why(
    conductor: ConductorStub, memory: Stub, message: str, agent: str
) -> None:
    tenant = credentials(f"route-{uid()}")
    session, routing, events = await _turn(conductor, tenant, message)
    assert routing.strategy == conductor_pb2.ROUTING_STRATEGY_SIMILARITY
    assert routing.agent == agent
    assert events[-1].final.agent == agent
    scores = [c.score for c in routing.candidates]
    assert routing.candidates[0].name == agent
    assert scores == sorted(scores, reverse=True)
    assert scores[0] >= ConductorSettings().routing_threshold
    names = {c.name for c in routing.candidates}
    # Approval needs structured input and the assistant a model: neither can take it.
    assert "agents/approval" not in names
    assert "agents/assistant" not in names
    # "Why did this agent answer" is a ListDecisions query; other tenants see nothing.
    (decision,) = await _decisions(memory, session, tenant)
    assert decision.name == routing.decision
    assert decision.chosen_action == agent
    assert decision.reasoning == routing.reason
    assert list(decision.candidates) == list(routing.candidates)
    assert decision.metadata.fields["strategy"].string_value == "ROUTING_STRATEGY_SIMILARITY"
    assert await _decisions(memory, session, credentials(f"other-{uid()}")) == []


async def test_below_the_threshold_the_default_agent_answers_with_the_scores_kept(
    backends: Backends, memory_server: RunningServer, agent_server: RunningServer, memory: Stub
) -> None:
    tenant = credentials(f"route-{uid()}")
    async with _conductor(
        backends,
        memory_server.port,
        agent_server.port,
        AGENTMESH_CONDUCTOR_DEFAULT_AGENT="echo",
        AGENTMESH_CONDUCTOR_ROUTING_THRESHOLD="0.99",
    ) as stub:
        session, routing, events = await _turn(stub, tenant, "what is 17 * 23")
    assert routing.strategy == conductor_pb2.ROUTING_STRATEGY_DEFAULT
    assert routing.agent == "agents/echo"
    assert events[-1].final.agent == "agents/echo"
    assert routing.candidates[0].name == "agents/calculator"
    assert "0.99" in routing.reason
    (decision,) = await _decisions(memory, session, tenant)
    assert decision.candidates[0].name == "agents/calculator"
    assert decision.candidates[0].score == routing.candidates[0].score


def _llm(provider: ScriptedServer) -> dict[str, str]:
    return {
        "AGENTMESH_LLM_DEFAULT_MODEL": f"openai:{openai_wire.MODEL}",
        "AGENTMESH_LLM_OPENAI_BASE_URL": provider.url + "/v1",
        "AGENTMESH_LLM_OPENAI_API_KEY": "test-key",
        "AGENTMESH_LLM_MAX_ATTEMPTS": "1",
        "AGENTMESH_LLM_STRUCTURED_ATTEMPTS": "2",
    }


async def test_the_supervisor_model_picks_from_the_cards_and_similarity_covers_its_failure(
    backends: Backends,
    memory_server: RunningServer,
    agent_server: RunningServer,
    memory: Stub,
    provider: ScriptedServer,
) -> None:
    tenant = credentials(f"route-{uid()}")
    provider.script(
        # Not one of the cards: the schema refuses it and the model is asked again.
        openai_wire.completion('{"agent": "billing", "reason": "money"}'),
        openai_wire.completion(
            '{"agent": "summarizer", "reason": "the user wants a summary", "confidence": 0.9}'
        ),
        # The review of the summarizer's answer: it is enough.
        openai_wire.completion('{"agent": "FINISH", "reason": "summarized"}'),
        openai_wire.error(400, "model not found"),
    )
    async with _conductor(
        backends, memory_server.port, agent_server.port, **_llm(provider)
    ) as stub:
        session, routing, _ = await _turn(stub, tenant, "give me the gist: cats purr.")
        assert routing.strategy == conductor_pb2.ROUTING_STRATEGY_SUPERVISOR
        assert routing.agent == "agents/summarizer"
        assert "the user wants a summary" in routing.reason
        assert routing.candidates[0].name == "agents/summarizer"
        assert routing.candidates[0].score == pytest.approx(0.9)
        # With a model configured the assistant is among the cards the model reads.
        prompt = provider.requests[0].json()["messages"][0]["content"]
        assert "- assistant:" in prompt
        assert "- approval:" not in prompt
        (decision,) = await _decisions(memory, session, tenant)
        assert decision.metadata.fields["strategy"].string_value == "ROUTING_STRATEGY_SUPERVISOR"
        assert decision.candidates[0].reason == "the user wants a summary"
        # What the choice cost: both attempts' tokens (11 + 7 each), and the time.
        assert (decision.usage.input_tokens, decision.usage.output_tokens) == (22, 14)
        assert decision.usage.total_tokens == 36
        assert decision.latency.ToNanoseconds() > 0
        # The model fails: similarity decides, and says so.
        _, fallback, _ = await _turn(stub, tenant, "what is 17 * 23")
        assert fallback.strategy == conductor_pb2.ROUTING_STRATEGY_SIMILARITY
        assert fallback.agent == "agents/calculator"
        assert fallback.reason.startswith("the supervisor model failed")


async def test_the_supervisor_reviews_the_answer_and_may_hand_the_turn_on(
    backends: Backends,
    memory_server: RunningServer,
    agent_server: RunningServer,
    memory: Stub,
    provider: ScriptedServer,
) -> None:
    """langgraph-supervisor's loop: the model picks echo, reads echo's answer and hands
    the turn to the summarizer, reads both answers and finishes; one reply of both, two
    decisions. A review that fails ends the turn with the answer it has."""
    tenant = credentials(f"route-{uid()}")
    provider.script(
        openai_wire.completion('{"agent": "echo", "reason": "repeat it first"}'),
        openai_wire.completion(
            '{"agent": "summarizer", "reason": "now the gist", "confidence": 0.7}'
        ),
        openai_wire.completion('{"agent": "FINISH", "reason": "both done"}'),
        openai_wire.completion('{"agent": "echo", "reason": "repeat it"}'),
        openai_wire.error(500, "overloaded"),
    )
    message = "Cats purr when content. Dogs wag their tails. Birds sing at dawn."
    async with _conductor(
        backends, memory_server.port, agent_server.port, **_llm(provider)
    ) as stub:
        session, routing, events = await _turn(stub, tenant, message)
        assert routing.strategy == conductor_pb2.ROUTING_STRATEGY_SUPERVISOR
        routings = [e.routing for e in events if e.WhichOneof("event") == "routing"]
        assert [(r.strategy, r.agent) for r in routings] == [
            (conductor_pb2.ROUTING_STRATEGY_SUPERVISOR, "agents/echo"),
            (conductor_pb2.ROUTING_STRATEGY_HANDOFF, "agents/summarizer"),
        ]
        assert "now the gist" in routings[1].reason
        assert routings[1].candidates[0].score == pytest.approx(0.7)
        final = events[-1].final
        assert list(final.agents) == ["agents/echo", "agents/summarizer"]
        assert final.parts[0].text == message
        assert len(final.parts) == 2
        # The review read the message and echo's answer, and may pick FINISH.
        review = provider.requests[1].json()
        assert message in review["messages"][1]["content"]
        assert "Answer of echo:" in review["messages"][1]["content"]
        assert "FINISH" in json.dumps(review)
        second = provider.requests[2].json()["messages"][1]["content"]
        assert "Answer of summarizer:" in second
        decisions = await _decisions(memory, session, tenant)
        assert sorted(d.chosen_action for d in decisions) == ["agents/echo", "agents/summarizer"]

        # The review fails: the turn ends with echo's answer.
        _, routing, events = await _turn(stub, tenant, "say this back")
        assert routing.agent == "agents/echo"
        assert list(events[-1].final.agents) == ["agents/echo"]
        assert [p.text for p in events[-1].final.parts] == ["say this back"]


async def test_a_retried_request_id_replays_without_routing_again(
    backends: Backends,
    memory_server: RunningServer,
    agent_server: RunningServer,
    provider: ScriptedServer,
) -> None:
    """The retry finds its turn before routing: no second model call, and a retry is
    not refused where the first call was not (the model now failing)."""
    tenant = credentials(f"route-{uid()}")
    provider.script(
        openai_wire.completion('{"agent": "echo", "reason": "repeat it"}'),
        openai_wire.completion('{"agent": "FINISH", "reason": "done"}'),
        openai_wire.error(500, "overloaded"),
    )
    fields: dict[str, Any] = {
        "session": f"sessions/route-{uid()}",
        "create_session": True,
        "parts": text("say it twice"),
        "request_id": f"r-{uid()}",
    }
    async with _conductor(
        backends, memory_server.port, agent_server.port, **_llm(provider)
    ) as stub:
        first = await converse(stub, tenant, **fields)
        assert len(provider.requests) == 2  # the pick and the review
        again = await converse(stub, tenant, **fields)
        assert again == first
        assert len(provider.requests) == 2
