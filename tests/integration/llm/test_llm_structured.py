"""``invoke_structured`` with a real chat model (ChatOpenAI) against a scripted server:
what goes back to the model after an invalid answer, and when it stops."""

from __future__ import annotations

import json

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage

from agentmesh.llm.models import build_chat_model
from agentmesh.llm.settings import LlmSettings
from agentmesh.llm.structured import StructuredOutputError, invoke_structured
from agentmesh.llm.usage import TokenUsage, UsageMeter
from providers import anthropic_wire, openai_wire
from providers.server import ScriptedServer

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer", "minimum": 1},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}


def openai_model(server: ScriptedServer) -> BaseChatModel:
    settings = LlmSettings(openai_base_url=server.url + "/v1", openai_api_key="k", timeout_s=5)
    return build_chat_model("openai:gpt-4.1-mini", settings)


async def test_fenced_json_valid_first_time(server: ScriptedServer) -> None:
    server.script(
        openai_wire.completion('Sure!\n```json\n{"city": "Oslo", "days": 3}\n```\nEnjoy.')
    )
    meter = UsageMeter()
    value = await invoke_structured(
        openai_model(server),
        [SystemMessage("You plan trips."), HumanMessage("3 days in Oslo")],
        SCHEMA,
        attempts=3,
        meter=meter,
    )
    assert value == {"city": "Oslo", "days": 3}
    assert meter.calls == 1
    assert meter.usage == TokenUsage(11, 7, 18)
    messages = server.requests[0].json()["messages"]
    assert messages[0]["role"] == "system"
    assert messages[0]["content"].startswith("You plan trips.\n\n")
    assert '"additionalProperties": false' in messages[0]["content"]
    assert messages[1] == {"role": "user", "content": "3 days in Oslo"}


async def test_validation_error_goes_back_to_the_model(server: ScriptedServer) -> None:
    server.script(
        openai_wire.completion('{"city": "Oslo", "days": 0}'),
        openai_wire.completion('{"city": "Oslo", "days": 2}'),
    )
    meter = UsageMeter()
    value = await invoke_structured(
        openai_model(server), [HumanMessage("Oslo")], SCHEMA, attempts=3, meter=meter
    )
    assert value == {"city": "Oslo", "days": 2}
    assert meter.calls == 2
    assert meter.usage == TokenUsage(22, 14, 36)
    retry = server.requests[1].json()["messages"]
    assert retry[-2] == {"role": "assistant", "content": '{"city": "Oslo", "days": 0}'}
    assert retry[-1]["role"] == "user"
    assert "at $.days: 0 is less than the minimum of 1" in retry[-1]["content"]


async def test_gives_up_after_attempts_with_the_last_problems(server: ScriptedServer) -> None:
    server.script(
        openai_wire.completion("I cannot answer in JSON."),
        openai_wire.completion('{"city": 7, "days": 2, "extra": true}'),
        openai_wire.completion("never asked"),
    )
    with pytest.raises(StructuredOutputError) as caught:
        await invoke_structured(openai_model(server), [HumanMessage("x")], SCHEMA, attempts=2)
    assert len(server.requests) == 2
    error = caught.value
    assert error.reason == "MODEL_OUTPUT_INVALID"
    assert error.attempts == 2
    assert any("$.city: 7 is not of type 'string'" in problem for problem in error.problems)
    assert any("'extra' was unexpected" in problem for problem in error.problems)
    first_feedback = server.requests[1].json()["messages"][-1]["content"]
    assert "no JSON found" in first_feedback


async def test_anthropic_answer_with_bare_fence(server: ScriptedServer) -> None:
    settings = LlmSettings(anthropic_base_url=server.url, anthropic_api_key="k", timeout_s=5)
    model = build_chat_model("anthropic:claude-sonnet-4-5", settings)
    server.script(anthropic_wire.message(f"```\n{json.dumps({'city': 'Rome', 'days': 1})}\n```"))
    value = await invoke_structured(model, [HumanMessage("Rome")], SCHEMA, attempts=1)
    assert value == {"city": "Rome", "days": 1}
    body = server.requests[0].json()
    assert "JSON Schema" in body["system"]
