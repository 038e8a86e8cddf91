"""The structured-output helper's pure parts: the answer's message carries the usage
of every attempt (so a run counts it), and a structured agent declares its schema."""

from __future__ import annotations

import pytest

from agentmesh.agent.agents.structured import StructuredAnswer, run_model, structured_agent
from agentmesh.agent.resources import AgentResources
from agentmesh.agent.runtime.inputs import MODEL_KEY
from agentmesh.llm.models import ChatModels
from agentmesh.llm.settings import LlmSettings
from agentmesh.llm.usage import TokenUsage

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def _resources() -> AgentResources:
    llm = LlmSettings()
    return AgentResources(llm=llm, models=ChatModels(llm), memory=None)


def test_the_answer_message_carries_every_attempts_usage() -> None:
    answer = StructuredAnswer(value={"n": 1, "é": "ü"}, usage=TokenUsage(30, 12, 42), attempts=2)
    message = answer.message()
    assert message.content == '{"n": 1, "é": "ü"}'
    assert message.usage_metadata == {"input_tokens": 30, "output_tokens": 12, "total_tokens": 42}
    assert answer.message("one").content == "one"


def test_the_run_model_is_read_from_the_config() -> None:
    assert run_model({"configurable": {MODEL_KEY: "openai:gpt-4.1-mini"}}) == "openai:gpt-4.1-mini"
    assert run_model({}) == ""


def test_a_structured_agent_advertises_the_schema_it_enforces() -> None:
    definition = structured_agent(
        _resources(), id="numbers", display_name="Numbers", description="d", output_schema=SCHEMA
    )
    assert definition.card.output_schema == SCHEMA
    assert definition.card.input_schema["additionalProperties"] is False
    assert definition.card.labels["llm"] == "true"
    assert definition.needs == frozenset({"model"})


@pytest.mark.parametrize("schema", [{}, {"type": 12}])
def test_a_structured_agent_needs_a_valid_schema(schema: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="output_schema"):
        structured_agent(
            _resources(), id="numbers", display_name="N", description="d", output_schema=schema
        )
