"""ChatAnthropic, built by ``build_chat_model``, against a server speaking Messages."""

from __future__ import annotations

import time

import pytest
from langchain_core.exceptions import ModelInvalidRequestError
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage

from agentmesh.core.errors import FailedPrecondition, ResourceExhausted, Unavailable
from agentmesh.llm.errors import domain_error
from agentmesh.llm.models import build_chat_model
from agentmesh.llm.settings import LlmSettings
from agentmesh.llm.usage import TokenUsage, token_usage
from providers import anthropic_wire
from providers.server import Reply, ScriptedServer

MODEL = "anthropic:" + anthropic_wire.MODEL
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather of a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def settings(server: ScriptedServer, **overrides: object) -> LlmSettings:
    values: dict[str, object] = {
        "anthropic_base_url": server.url,
        "anthropic_api_key": "sk-ant-test",
        "timeout_s": 5.0,
    }
    values.update(overrides)
    return LlmSettings(**values)  # type: ignore[arg-type]


async def test_answer_usage_and_request(server: ScriptedServer) -> None:
    server.script(anthropic_wire.message("Bonjour", usage=(30, 2)))
    model = build_chat_model(MODEL, settings(server))
    answer = await model.ainvoke([SystemMessage("be brief"), HumanMessage("hi")])
    assert answer.text == "Bonjour"
    assert token_usage(answer) == TokenUsage(30, 2, 32)
    (request,) = server.requests
    assert request.path == "/v1/messages"
    # The anthropic SDK 2.x sends the key as a bearer token (1.x: x-api-key).
    sent = request.headers.get("x-api-key") or request.headers["authorization"]
    assert sent.removeprefix("Bearer ") == "sk-ant-test"
    assert "anthropic-version" in request.headers
    body = request.json()
    assert body["model"] == anthropic_wire.MODEL
    assert body["system"] == "be brief"
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["max_tokens"] > 0


async def test_stream_events_text_tool_use_and_usage(server: ScriptedServer) -> None:
    server.script(
        anthropic_wire.stream(
            ["Let me ", "check."],
            tool_use=("toolu_1", "get_weather", ['{"city":', ' "Lima"}']),
            usage=(40, 12),
        )
    )
    model = build_chat_model(MODEL, settings(server)).bind_tools([WEATHER_TOOL])
    total: AIMessageChunk | None = None
    texts = []
    async for chunk in model.astream("weather in Lima?"):
        assert isinstance(chunk, AIMessageChunk)
        texts.append(chunk.text)
        total = chunk if total is None else total + chunk
    assert total is not None
    assert [text for text in texts if text] == ["Let me ", "check."]
    assert total.tool_calls == [
        {"name": "get_weather", "args": {"city": "Lima"}, "id": "toolu_1", "type": "tool_call"}
    ]
    assert token_usage(total) == TokenUsage(40, 12, 52)
    body = server.requests[0].json()
    assert body["stream"] is True
    assert body["tools"][0]["name"] == "get_weather"


async def test_tool_use_plain(server: ScriptedServer) -> None:
    server.script(anthropic_wire.message(tool_use=("toolu_2", "get_weather", {"city": "Rome"})))
    model = build_chat_model(MODEL, settings(server)).bind_tools([WEATHER_TOOL])
    answer = await model.ainvoke("weather in Rome?")
    assert answer.tool_calls == [
        {"name": "get_weather", "args": {"city": "Rome"}, "id": "toolu_2", "type": "tool_call"}
    ]


async def test_429_waits_what_retry_after_asks(server: ScriptedServer) -> None:
    server.script(
        anthropic_wire.error(429, headers={"retry-after": "1"}),
        anthropic_wire.message("finally"),
    )
    model = build_chat_model(MODEL, settings(server))
    assert (await model.ainvoke("hi")).text == "finally"
    (gap,) = server.gaps()
    assert 0.95 <= gap < 3.0


async def test_overloaded_5xx_retried_up_to_max_attempts(server: ScriptedServer) -> None:
    server.script(anthropic_wire.error(529), anthropic_wire.error(500), anthropic_wire.error(503))
    model = build_chat_model(MODEL, settings(server, max_attempts=3))
    with pytest.raises(Exception) as caught:  # noqa: PT011 - mapped and checked below
        await model.ainvoke("hi")
    assert len(server.requests) == 3
    first, second = server.gaps()
    assert 0.35 <= first <= 0.9
    assert 0.7 <= second <= 1.5
    error = domain_error(caught.value)
    assert isinstance(error, Unavailable)


async def test_429_exhausted_maps_to_resource_exhausted(server: ScriptedServer) -> None:
    server.script(*(anthropic_wire.error(429, headers={"retry-after": "0.05"}) for _ in range(2)))
    model = build_chat_model(MODEL, settings(server, max_attempts=2))
    with pytest.raises(Exception) as caught:  # noqa: PT011 - mapped and checked below
        await model.ainvoke("hi")
    assert len(server.requests) == 2
    error = domain_error(caught.value)
    assert isinstance(error, ResourceExhausted)
    assert error.retry_after_s == pytest.approx(0.05)


async def test_400_and_401_are_not_retried(server: ScriptedServer) -> None:
    server.script(anthropic_wire.error(400), anthropic_wire.error(401))
    model = build_chat_model(MODEL, settings(server))
    with pytest.raises(ModelInvalidRequestError):
        await model.ainvoke("hi")
    with pytest.raises(Exception) as caught:  # noqa: PT011 - mapped and checked below
        await model.ainvoke("hi")
    assert len(server.requests) == 2
    error = domain_error(caught.value)
    assert isinstance(error, FailedPrecondition)
    assert error.reason == "LLM_AUTH_FAILED"


async def test_slow_answer_times_out_on_every_attempt(server: ScriptedServer) -> None:
    slow = anthropic_wire.message("too late")
    server.script(*(Reply(slow.status, slow.headers, slow.body, delay_s=3.0) for _ in range(2)))
    model = build_chat_model(MODEL, settings(server, timeout_s=0.3, max_attempts=2))
    started = time.monotonic()
    with pytest.raises(Exception) as caught:  # noqa: PT011 - mapped and checked below
        await model.ainvoke("hi")
    assert 0.6 <= time.monotonic() - started < 2.0
    assert len(server.requests) == 2
    error = domain_error(caught.value)
    assert isinstance(error, Unavailable)
    assert error.reason == "LLM_TIMEOUT"
