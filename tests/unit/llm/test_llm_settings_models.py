"""LlmSettings through the core loader, and what build_chat_model makes of them (no
model is called: building connects nothing)."""

from __future__ import annotations

import asyncio

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_aws import ChatBedrockConverse
from langchain_openai import ChatOpenAI

from agentmesh.core.errors import FailedPrecondition
from agentmesh.core.settings import ConfigError
from agentmesh.llm.models import ChatModels, build_chat_model, parse_model
from agentmesh.llm.settings import LlmSettings


def test_defaults() -> None:
    settings = LlmSettings.from_env({})
    assert settings == LlmSettings()
    assert (settings.default_model, settings.timeout_s) == ("", 60.0)
    assert (settings.max_attempts, settings.structured_attempts) == (3, 3)


def test_loads_every_variable() -> None:
    settings = LlmSettings.from_env(
        {
            "AGENTMESH_LLM_DEFAULT_MODEL": "anthropic:claude-sonnet-4-5",
            "AGENTMESH_LLM_OPENAI_BASE_URL": "http://127.0.0.1:11434/v1",
            "AGENTMESH_LLM_OPENAI_API_KEY": "sk-1",
            "AGENTMESH_LLM_ANTHROPIC_BASE_URL": "https://proxy.example/anthropic",
            "AGENTMESH_LLM_ANTHROPIC_API_KEY": "sk-ant-1",
            "AGENTMESH_LLM_BEDROCK_REGION": "eu-west-1",
            "AGENTMESH_LLM_BEDROCK_ENDPOINT_URL": "https://vpce.example",
            "AGENTMESH_LLM_TIMEOUT_S": "12.5",
            "AGENTMESH_LLM_MAX_ATTEMPTS": "5",
            "AGENTMESH_LLM_STRUCTURED_ATTEMPTS": "2",
        }
    )
    assert settings == LlmSettings(
        default_model="anthropic:claude-sonnet-4-5",
        openai_base_url="http://127.0.0.1:11434/v1",
        openai_api_key="sk-1",
        anthropic_base_url="https://proxy.example/anthropic",
        anthropic_api_key="sk-ant-1",
        bedrock_region="eu-west-1",
        bedrock_endpoint_url="https://vpce.example",
        timeout_s=12.5,
        max_attempts=5,
        structured_attempts=2,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AGENTMESH_LLM_DEFAULT_MODEL", "gpt-4"),
        ("AGENTMESH_LLM_OPENAI_BASE_URL", "127.0.0.1:8000"),
        ("AGENTMESH_LLM_BEDROCK_REGION", "us east"),
        ("AGENTMESH_LLM_TIMEOUT_S", "0"),
        ("AGENTMESH_LLM_MAX_ATTEMPTS", "0"),
        ("AGENTMESH_LLM_MAX_ATTEMPTS", "11"),
        ("AGENTMESH_LLM_STRUCTURED_ATTEMPTS", "0"),
        ("AGENTMESH_LLM_TIMEOUT_S", "soon"),
    ],
)
def test_bad_values_name_their_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        LlmSettings.from_env({variable: value})


def test_keys_are_redacted_in_errors() -> None:
    # An API key is never range-checked, so force a failing check to see the message.
    with pytest.raises(ConfigError) as caught:
        LlmSettings.from_env(
            {"AGENTMESH_LLM_OPENAI_API_KEY": "sk-secret", "AGENTMESH_LLM_MAX_ATTEMPTS": "0"}
        )
    assert "sk-secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("openai:gpt-4.1-mini", ("openai", "gpt-4.1-mini")),
        ("openai:llama3.2:3b", ("openai", "llama3.2:3b")),
        (
            "bedrock:anthropic.claude-3-5-haiku-20241022-v1:0",
            ("bedrock", "anthropic.claude-3-5-haiku-20241022-v1:0"),
        ),
        ("anthropic:claude-sonnet-4-5", ("anthropic", "claude-sonnet-4-5")),
    ],
)
def test_parse_model(model: str, expected: tuple[str, str]) -> None:
    assert parse_model(model) == expected


@pytest.mark.parametrize("model", ["gpt-4", "mistral:large", "openai:", "openai: x", "x" * 300])
def test_bad_model_is_failed_precondition(model: str) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        parse_model(model)
    assert caught.value.reason == "LLM_MODEL_INVALID"


@pytest.mark.parametrize(
    ("model", "settings", "variable"),
    [
        ("", LlmSettings(), "AGENTMESH_LLM_DEFAULT_MODEL"),
        ("openai:gpt-4.1-mini", LlmSettings(), "AGENTMESH_LLM_OPENAI_API_KEY"),
        ("anthropic:claude-sonnet-4-5", LlmSettings(), "AGENTMESH_LLM_ANTHROPIC_API_KEY"),
        ("bedrock:amazon.nova-lite-v1:0", LlmSettings(), "AGENTMESH_LLM_BEDROCK_REGION"),
    ],
)
def test_missing_setting_is_named(model: str, settings: LlmSettings, variable: str) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        build_chat_model(model, settings)
    assert caught.value.reason == "LLM_NOT_CONFIGURED"
    assert variable in caught.value.message
    assert [violation[1] for violation in caught.value.violations] == [variable]


def test_openai_model_configuration() -> None:
    settings = LlmSettings(openai_api_key="sk-1", timeout_s=7.0, max_attempts=4)
    model = build_chat_model("openai:gpt-4.1-mini", settings)
    assert isinstance(model, ChatOpenAI)
    assert model.model_name == "gpt-4.1-mini"
    assert model.openai_api_base == "https://api.openai.com/v1"
    assert model.request_timeout == 7.0
    assert model.max_retries == 3
    assert model.stream_usage is True


def test_default_model_is_used_when_none_is_named() -> None:
    settings = LlmSettings(default_model="anthropic:claude-haiku-4-5", anthropic_api_key="k")
    model = build_chat_model("", settings)
    assert isinstance(model, ChatAnthropic)
    assert model.model == "claude-haiku-4-5"
    assert model.default_request_timeout == 60.0
    assert model.max_retries == 2


def test_bedrock_model_configuration() -> None:
    settings = LlmSettings(bedrock_region="eu-central-1", timeout_s=9.0, max_attempts=2)
    model = build_chat_model("bedrock:amazon.nova-lite-v1:0", settings)
    assert isinstance(model, ChatBedrockConverse)
    config = model.client.meta.config
    assert model.client.meta.region_name == "eu-central-1"
    assert (config.connect_timeout, config.read_timeout) == (9.0, 9.0)
    assert config.retries == {"total_max_attempts": 2, "mode": "standard"}


async def test_chat_models_builds_each_model_once() -> None:
    models = ChatModels(LlmSettings(default_model="openai:a", openai_api_key="k"))
    first = await models.aget("")
    assert models.get("openai:a") is first
    assert await models.aget("openai:a") is first
    assert models.get("openai:b") is not first
    both = await asyncio.gather(models.aget("openai:c"), models.aget("openai:c"))
    assert both[0] is both[1]
