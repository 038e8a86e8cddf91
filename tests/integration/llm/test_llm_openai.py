"""ChatOpenAI, built by ``build_chat_model``, against a server speaking chat completions."""

from __future__ import annotations

import time

import pytest
from langchain_core.exceptions import ModelInvalidRequestError
from langchain_core.messages import AIMessageChunk, HumanMessage

from agentmesh.core.errors import FailedPrecondition, ResourceExhausted, Unavailable
from agentmesh.llm.errors import domain_error
from agentmesh.llm.models import build_chat_model
from agentmesh.llm.settings import LlmSettings
from agentmesh.llm.usage import TokenUsage, token_usage
from providers import openai_wire
from providers.server import Reply, ScriptedServer

MODEL = "openai:" + openai_wire.MODEL
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def settings(server: ScriptedServer, **overrides: object) -> LlmSettings:
    values: dict[str, object] = {
        "openai_base_url": server.url + "/v1",
        "openai_api_key": "sk-test",
        "timeout_s": 5.0,
    }
    values.update(overrides)
    return LlmSettings(**values)  # type: ignore[arg-type]


async def test_answer_usage_and_request(server: ScriptedServer) -> None:
    server.script(openai_wire.completion("Hello there", usage=(21, 4)))
    model = build_chat_model(MODEL, settings(server))
    answer = await model.ainvoke([HumanMessage("hi")])
    assert answer.text == "Hello there"
    assert token_usage(answer) == TokenUsage(21, 4, 25)
    (request,) = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    body = request.json()
    assert body["model"] == openai_wire.MODEL
    assert body["messages"] == [{"role": "user", "content": "hi"}]


async def test_local_server_needs_no_key(server: ScriptedServer) -> None:
    """vLLM, Ollama, LM Studio: a base URL and no key work (a placeholder is sent)."""
    server.script(openai_wire.completion("ok"))
    model = build_chat_model("openai:llama3.2:3b", settings(server, openai_api_key=""))
    assert (await model.ainvoke("hi")).text == "ok"
    assert server.requests[0].json()["model"] == "llama3.2:3b"


async def test_stream_text_and_usage(server: ScriptedServer) -> None:
    server.script(openai_wire.stream(["Hel", "lo", " world"], usage=(8, 3)))
    model = build_chat_model(MODEL, settings(server))
    chunks = [chunk async for chunk in model.astream([HumanMessage("hi")])]
    assert [chunk.text for chunk in chunks if chunk.text] == ["Hel", "lo", " world"]
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    assert isinstance(total, AIMessageChunk)
    assert total.text == "Hello world"
    assert token_usage(total) == TokenUsage(8, 3, 11)
    body = server.requests[0].json()
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_tool_call_plain_and_streamed(server: ScriptedServer) -> None:
    server.script(
        openai_wire.completion(None, tool_calls=[("call_1", "get_weather", {"city": "Oslo"})]),
        openai_wire.stream(tool_call=("call_2", "get_weather", ['{"ci', 'ty": "Par', 'is"}'])),
    )
    model = build_chat_model(MODEL, settings(server)).bind_tools([WEATHER_TOOL])
    answer = await model.ainvoke("weather in Oslo?")
    assert answer.tool_calls == [
        {"name": "get_weather", "args": {"city": "Oslo"}, "id": "call_1", "type": "tool_call"}
    ]
    total: AIMessageChunk | None = None
    async for chunk in model.astream("weather in Paris?"):
        assert isinstance(chunk, AIMessageChunk)
        total = chunk if total is None else total + chunk
    assert total is not None
    assert total.tool_calls == [
        {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_2", "type": "tool_call"}
    ]
    assert server.requests[0].json()["tools"][0]["function"]["name"] == "get_weather"


async def test_429_waits_what_retry_after_asks(server: ScriptedServer) -> None:
    server.script(
        openai_wire.error(429, "slow down", headers={"retry-after": "1"}),
        openai_wire.completion("finally"),
    )
    model = build_chat_model(MODEL, settings(server))
    assert (await model.ainvoke("hi")).text == "finally"
    assert len(server.requests) == 2
    # The SDK's own backoff would wait at most 0.5 s before the first retry.
    (gap,) = server.gaps()
    assert 0.95 <= gap < 3.0


async def test_5xx_retried_with_growing_backoff_up_to_max_attempts(
    server: ScriptedServer,
) -> None:
    server.script(*(openai_wire.error(500) for _ in range(3)))
    model = build_chat_model(MODEL, settings(server, max_attempts=3))
    with pytest.raises(Exception) as caught:  # noqa: PT011 - mapped and checked below
        await model.ainvoke("hi")
    assert len(server.requests) == 3
    first, second = server.gaps()
    # 0.5 s then 1 s, each less up to 25 % jitter.
    assert 0.35 <= first <= 0.9
    assert 0.7 <= second <= 1.5
    error = domain_error(caught.value)
    assert isinstance(error, Unavailable)
    assert error.reason == "LLM_UNAVAILABLE"


async def test_429_exhausted_maps_to_resource_exhausted(server: ScriptedServer) -> None:
    server.script(*(openai_wire.error(429, headers={"retry-after-ms": "50"}) for _ in range(2)))
    model = build_chat_model(MODEL, settings(server, max_attempts=2))
    with pytest.raises(Exception) as caught:  # noqa: PT011 - mapped and checked below
        await model.ainvoke("hi")
    assert len(server.requests) == 2
    error = domain_error(caught.value)
    assert isinstance(error, ResourceExhausted)
    assert error.reason == "LLM_RATE_LIMITED"
    assert error.retry_after_s == pytest.approx(0.05)


async def test_400_is_not_retried(server: ScriptedServer) -> None:
    server.script(openai_wire.error(400, "bad request"), openai_wire.completion("never"))
    model = build_chat_model(MODEL, settings(server))
    with pytest.raises(ModelInvalidRequestError) as caught:
        await model.ainvoke("hi")
    assert len(server.requests) == 1
    error = domain_error(caught.value)
    assert isinstance(error, FailedPrecondition)
    assert error.reason == "LLM_REQUEST_REFUSED"


async def test_single_attempt_when_max_attempts_is_1(server: ScriptedServer) -> None:
    server.script(openai_wire.error(503), openai_wire.completion("never"))
    model = build_chat_model(MODEL, settings(server, max_attempts=1))
    with pytest.raises(Exception):  # noqa: B017, PT011 - the count is the point
        await model.ainvoke("hi")
    assert len(server.requests) == 1


async def test_malformed_json_fails_without_retry(server: ScriptedServer) -> None:
    server.script(openai_wire.malformed(), openai_wire.completion("never"))
    model = build_chat_model(MODEL, settings(server))
    with pytest.raises(ValueError, match="Unterminated string") as caught:
        await model.ainvoke("hi")
    assert len(server.requests) == 1
    error = domain_error(caught.value)
    assert isinstance(error, Unavailable)
    assert error.reason == "LLM_MALFORMED_ANSWER"


async def test_slow_answer_times_out_on_every_attempt(server: ScriptedServer) -> None:
    slow = openai_wire.completion("too late")
    server.script(*(Reply(slow.status, slow.headers, slow.body, delay_s=3.0) for _ in range(2)))
    model = build_chat_model(MODEL, settings(server, timeout_s=0.3, max_attempts=2))
    started = time.monotonic()
    with pytest.raises(Exception) as caught:  # noqa: PT011 - mapped and checked below
        await model.ainvoke("hi")
    elapsed = time.monotonic() - started
    assert len(server.requests) == 2
    # Two 0.3 s attempts and one backoff (at most 0.5 s), far below the 3 s answer.
    assert 0.6 <= elapsed < 2.0
    error = domain_error(caught.value)
    assert isinstance(error, Unavailable)
    assert error.reason == "LLM_TIMEOUT"
