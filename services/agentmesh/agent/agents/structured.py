"""Structured output for model-backed agents: the model's final answer as a JSON object
valid against the agent's ``output_schema``, in the run's ``RunResult.output``.

Three sizes, for graph authors (the built-in summarizer uses the smallest):

- :func:`structured_agent` declares a whole agent: the conversation goes to the model,
  whose answer must match the card's ``output_schema``, the one schema both advertise
  and enforce;
- :func:`structured_node` is a node that ends a graph of your own: it asks the model
  for the answer to the conversation so far and sets the state's ``output``;
- :func:`answer_structured` is the call itself, for a node that does more with it.

The model is the run's (``options.model``, else the card's ``default_model``, else
``AGENTMESH_LLM_DEFAULT_MODEL``). An answer that is not JSON matching the schema (a
markdown fence around it is fine) goes back to the model with the validation errors,
at most ``AGENTMESH_LLM_STRUCTURED_ATTEMPTS`` model calls in all; after the last
invalid answer the run is FAILED_PRECONDITION (``MODEL_OUTPUT_INVALID``) with one
``PreconditionFailure`` violation per problem. The attempts are not streamed as
message deltas (the client would see JSON that may be rejected); the answer's message
carries the tokens of every attempt, so the run's usage and budgets count them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Protocol, TypedDict

from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.constants import TAG_NOSTREAM
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from agentmesh.agent.definition import AgentDefinition, define_agent
from agentmesh.agent.registry import Skill
from agentmesh.agent.resources import AgentResources
from agentmesh.agent.runtime.inputs import MODEL_KEY
from agentmesh.llm.structured import invoke_structured
from agentmesh.llm.usage import TokenUsage, UsageMeter

NO_INPUT_SCHEMA: Final[Mapping[str, Any]] = {
    "type": "object",
    "properties": {},
    "additionalProperties": False,
}
"""Input schema of a :func:`structured_agent`: no structured input, the message only."""


def run_model(config: RunnableConfig) -> str:
    """The model of the run a node belongs to (``provider:name``), "" when none is
    configured."""
    return str(config.get("configurable", {}).get(MODEL_KEY, ""))


@dataclass(frozen=True)
class StructuredAnswer:
    """A valid answer and what all its attempts cost."""

    value: dict[str, Any]
    """The JSON object, valid against the schema."""
    usage: TokenUsage
    """Tokens of every attempt, the invalid ones included."""
    attempts: int
    """Model calls made."""

    def message(self, text: str | None = None) -> AIMessage:
        """The reply for the state's messages: ``text`` (default: the value as JSON),
        carrying the usage, so the run counts the tokens."""
        content = text if text is not None else json.dumps(self.value, ensure_ascii=False)
        return AIMessage(
            content=content,
            usage_metadata={
                "input_tokens": self.usage.input_tokens,
                "output_tokens": self.usage.output_tokens,
                "total_tokens": self.usage.total_tokens,
            },
        )


async def answer_structured(
    resources: AgentResources,
    config: RunnableConfig,
    messages: Sequence[BaseMessage],
    schema: Mapping[str, Any],
) -> StructuredAnswer:
    """The run's model's answer to ``messages`` as a JSON object valid against
    ``schema``; errors as the module docstring says, the provider's as
    :mod:`agentmesh.llm.errors` maps them."""
    model = await resources.models.aget(run_model(config))
    meter = UsageMeter()
    value = await invoke_structured(
        model,
        messages,
        schema,
        attempts=resources.llm.structured_attempts,
        meter=meter,
        # The node's callbacks and metadata come from the context; the tag keeps the
        # attempts out of the token stream.
        config={"tags": [TAG_NOSTREAM]},
    )
    return StructuredAnswer(value=value, usage=meter.usage, attempts=meter.calls)


class StructuredState(TypedDict, total=False):
    """The state a :func:`structured_node` reads and writes."""

    messages: Annotated[list[AnyMessage], add_messages]
    output: dict[str, Any]


class StructuredNode(Protocol):
    """A LangGraph node taking the run's config."""

    async def __call__(self, state: StructuredState, config: RunnableConfig) -> dict[str, Any]:
        """The state update: the answer message and ``output``."""


def structured_node(
    resources: AgentResources,
    output_schema: Mapping[str, Any],
    *,
    instructions: str = "",
) -> StructuredNode:
    """A node that answers the conversation in ``messages`` with JSON valid against
    ``output_schema`` (give it the card's), preceded by ``instructions`` as the system
    prompt: it adds the answer (as JSON text) to ``messages`` and sets ``output``, which
    the runtime returns as ``RunResult.output``."""
    schema = dict(output_schema)

    async def answer(state: StructuredState, config: RunnableConfig) -> dict[str, Any]:
        conversation: list[BaseMessage] = list(state.get("messages", []))
        if instructions:
            conversation.insert(0, SystemMessage(content=instructions))
        found = await answer_structured(resources, config, conversation, schema)
        return {"messages": [found.message()], "output": found.value}

    return answer


def structured_agent(
    resources: AgentResources,
    *,
    id: str,  # the card's field name
    display_name: str,
    description: str,
    output_schema: Mapping[str, Any],
    instructions: str = "",
    skills: Sequence[Skill] = (),
    default_model: str = "",
    labels: Mapping[str, str] | None = None,
    version: str = "1",
) -> AgentDefinition:
    """An agent whose answer is JSON valid against its card's ``output_schema``: the
    user's message (and the thread's earlier turns) goes to the model with
    ``instructions``. Needs a model (FAILED_PRECONDITION naming the setting without
    one)."""
    if not output_schema:
        raise ValueError(f"agent {id!r}: a structured agent needs an output_schema")
    builder = StateGraph(StructuredState)
    builder.add_node("answer", structured_node(resources, output_schema, instructions=instructions))
    builder.add_edge(START, "answer")
    builder.add_edge("answer", END)
    return define_agent(
        id=id,
        display_name=display_name,
        description=description,
        graph=builder,
        version=version,
        skills=skills,
        input_schema=NO_INPUT_SCHEMA,
        output_schema=output_schema,
        default_model=default_model,
        labels={"llm": "true", **(labels or {})},
        needs=("model",),
    )
