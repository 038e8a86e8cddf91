"""ChatBedrockConverse, built by ``build_chat_model``, against a server speaking
Bedrock's Converse and ConverseStream (AWS event-stream framing)."""

from __future__ import annotations

import time

import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage

from agentmesh.core.errors import FailedPrecondition, ResourceExhausted, Unavailable
from agentmesh.llm.errors import domain_error
from agentmesh.llm.models import build_chat_model
from agentmesh.llm.settings import LlmSettings
from agentmesh.llm.usage import TokenUsage, token_usage
from providers import bedrock_wire
from providers.server import Reply, ScriptedServer

pytestmark = pytest.mark.usefixtures("aws_credentials")

MODEL = "bedrock:" + bedrock_wire.MODEL
CONVERSE_PATH = "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather of a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def settings(server: ScriptedServer, **overrides: object) -> LlmSettings:
    values: dict[str, object] = {
        "bedrock_region": "us-east-1",
        "bedrock_endpoint_url": server.url,
        "timeout_s": 5.0,
    }
    values.update(overrides)
    return LlmSettings(**values)  # type: ignore[arg-type]


async def test_converse_answer_usage_and_request(server: ScriptedServer) -> None:
    server.script(bedrock_wire.converse("Hej", usage=(50, 6)))
    model = build_chat_model(MODEL, settings(server))
    answer = await model.ainvoke([SystemMessage("be brief"), HumanMessage("hi")])
    assert answer.text == "Hej"
    assert token_usage(answer) == TokenUsage(50, 6, 56)
    (request,) = server.requests
    assert request.path == CONVERSE_PATH
    assert request.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    body = request.json()
    assert body["system"] == [{"text": "be brief"}]
    assert body["messages"] == [{"role": "user", "content": [{"text": "hi"}]}]


async def test_converse_tool_use(server: ScriptedServer) -> None:
    server.script(bedrock_wire.converse(tool_use=("tu_1", "get_weather", {"city": "Kyiv"})))
    model = build_chat_model(MODEL, settings(server)).bind_tools([WEATHER_TOOL])
    answer = await model.ainvoke("weather in Kyiv?")
    assert answer.tool_calls == [
        {"name": "get_weather", "args": {"city": "Kyiv"}, "id": "tu_1", "type": "tool_call"}
    ]
    assert server.requests[0].json()["toolConfig"]["tools"][0]["toolSpec"]["name"] == "get_weather"


async def test_converse_stream_event_stream_framing(server: ScriptedServer) -> None:
    server.script(
        bedrock_wire.converse_stream(
            ["Checking", "..."],
            tool_use=("tu_2", "get_weather", ['{"city":', ' "Quito"}']),
            usage=(60, 20),
        )
    )
    model = build_chat_model(MODEL, settings(server)).bind_tools([WEATHER_TOOL])
    total: AIMessageChunk | None = None
    texts = []
    async for chunk in model.astream("weather in Quito?"):
        assert isinstance(chunk, AIMessageChunk)
        texts.append(chunk.text)
        total = chunk if total is None else total + chunk
    assert total is not None
    assert [text for text in texts if text] == ["Checking", "..."]
    assert total.tool_calls == [
        {"name": "get_weather", "args": {"city": "Quito"}, "id": "tu_2", "type": "tool_call"}
    ]
    assert token_usage(total) == TokenUsage(60, 20, 80)
    assert server.requests[0].path == CONVERSE_PATH + "-stream"


async def test_throttling_waits_what_x_amz_retry_after_asks(server: ScriptedServer) -> None:
    server.script(
        bedrock_wire.error(429, "ThrottlingException", headers={"x-amz-retry-after": "1500"}),
        bedrock_wire.converse("finally"),
    )
    model = build_chat_model(MODEL, settings(server))
    assert (await model.ainvoke("hi")).text == "finally"
    # Without the header botocore waits a random share of 1 s before the first retry.
    (gap,) = server.gaps()
    assert 1.45 <= gap < 4.0


async def test_5xx_retried_up_to_max_attempts(server: ScriptedServer) -> None:
    server.script(
        bedrock_wire.error(500, "InternalServerException"),
        bedrock_wire.error(503, "ServiceUnavailableException"),
        bedrock_wire.error(500, "InternalServerException"),
        bedrock_wire.converse("never"),
    )
    model = build_chat_model(MODEL, settings(server, max_attempts=3))
    with pytest.raises(Exception) as caught:  # noqa: PT011 - mapped and checked below
        await model.ainvoke("hi")
    assert len(server.requests) == 3
    error = domain_error(caught.value)
    assert isinstance(error, Unavailable)
    assert error.reason == "LLM_UNAVAILABLE"


async def test_throttling_exhausted_maps_to_resource_exhausted(server: ScriptedServer) -> None:
    server.script(
        *(
            bedrock_wire.error(429, "ThrottlingException", headers={"x-amz-retry-after": "20"})
            for _ in range(2)
        )
    )
    model = build_chat_model(MODEL, settings(server, max_attempts=2))
    with pytest.raises(Exception) as caught:  # noqa: PT011 - mapped and checked below
        await model.ainvoke("hi")
    assert len(server.requests) == 2
    error = domain_error(caught.value)
    assert isinstance(error, ResourceExhausted)
    assert error.retry_after_s == pytest.approx(0.02)


async def test_validation_error_is_not_retried(server: ScriptedServer) -> None:
    server.script(bedrock_wire.error(400, "ValidationException"), bedrock_wire.converse("never"))
    model = build_chat_model(MODEL, settings(server))
    with pytest.raises(Exception) as caught:  # noqa: PT011 - mapped and checked below
        await model.ainvoke("hi")
    assert len(server.requests) == 1
    error = domain_error(caught.value)
    assert isinstance(error, FailedPrecondition)
    assert error.reason == "LLM_REQUEST_REFUSED"


async def test_slow_answer_times_out_on_every_attempt(server: ScriptedServer) -> None:
    slow = bedrock_wire.converse("too late")
    server.script(*(Reply(slow.status, slow.headers, slow.body, delay_s=3.0) for _ in range(2)))
    model = build_chat_model(MODEL, settings(server, timeout_s=0.3, max_attempts=2))
    started = time.monotonic()
    with pytest.raises(Exception) as caught:  # noqa: PT011 - mapped and checked below
        await model.ainvoke("hi")
    assert 0.6 <= time.monotonic() - started < 2.5
    assert len(server.requests) == 2
    error = domain_error(caught.value)
    assert isinstance(error, Unavailable)
    assert error.reason == "LLM_TIMEOUT"
