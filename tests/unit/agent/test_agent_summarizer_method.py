"""How the summarizer chooses its method: abstractive when there is a model, unless
the input asks for extractive; abstractive with no model names the setting."""

from __future__ import annotations

import pytest

from agentmesh.agent.agents.summarizer import choose_method, summarizer_agent
from agentmesh.core.errors import FailedPrecondition


@pytest.mark.parametrize(
    ("asked", "model", "method"),
    [
        ("", "", "extractive"),
        ("", "openai:gpt-4.1-mini", "abstractive"),
        ("extractive", "openai:gpt-4.1-mini", "extractive"),
        ("extractive", "", "extractive"),
        ("abstractive", "anthropic:claude-sonnet-4-5", "abstractive"),
    ],
)
def test_the_method(asked: str, model: str, method: str) -> None:
    assert choose_method(asked, model) == method


def test_abstractive_without_a_model_names_the_setting() -> None:
    with pytest.raises(FailedPrecondition) as raised:
        choose_method("abstractive", "")
    assert raised.value.reason == "LLM_NOT_CONFIGURED"
    assert [v[1] for v in raised.value.violations] == ["AGENTMESH_LLM_DEFAULT_MODEL"]


def test_the_input_schema_bounds_the_method() -> None:
    schema = summarizer_agent().card.input_schema
    assert schema["properties"]["method"] == {"enum": ["extractive", "abstractive"]}
    assert schema["additionalProperties"] is False
