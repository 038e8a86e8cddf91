"""``agents/summarizer``: a summary of a text, abstractive when a model is configured,
extractive (offline) when not.

- abstractive: the run's model (``options.model``, else ``AGENTMESH_LLM_DEFAULT_MODEL``)
  writes the summary, asked for through the structured-output helper (a JSON answer
  validated against a schema, retried with the validation error as feedback);
- extractive: no model — the sentences whose words are most frequent in the text, in
  their original order.

The input may ask for a ``method``; abstractive with no model configured is
FAILED_PRECONDITION naming ``AGENTMESH_LLM_DEFAULT_MODEL``. The output says which
method made the summary.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import partial
from typing import Annotated, Any, Final, Literal, TypedDict

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from agentmesh.agent.agents.structured import answer_structured, run_model
from agentmesh.agent.definition import AgentDefinition, define_agent
from agentmesh.agent.registry import Skill
from agentmesh.agent.resources import AgentResources
from agentmesh.agent.runtime.events import last_user_text
from agentmesh.core.errors import InvalidArgument
from agentmesh.core.offload import convert_sized
from agentmesh.llm.models import missing_setting

_SENTENCE: Final = re.compile(r"(?<=[.!?])\s+")
_WORD: Final = re.compile(r"[^\W\d_]+", re.UNICODE)
_STOPWORDS: Final = frozenset(
    (  # noqa: SIM905  # one string reads better than 44 list items
        "a an and are as at be but by for from has have he her his i in is it its of on or"
        " our she that the their them they this to was we were what when which who will"
        " with you your"
    ).split()
)
MAX_SENTENCES: Final = 10
DEFAULT_SENTENCES: Final = 3
MAX_TEXT_CHARS: Final = 256 * 1024
"""Longest text taken from the structured input (the run's input is bounded too)."""
MAX_SUMMARY_CHARS: Final = 8192
"""Longest abstractive summary the model may give (a longer one is sent back)."""
METHODS: Final = ("extractive", "abstractive")

Method = Literal["extractive", "abstractive"]

SUMMARY_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "minLength": 1, "maxLength": MAX_SUMMARY_CHARS},
    },
    "required": ["summary"],
    "additionalProperties": False,
}
"""What the model must answer in abstractive mode."""
INSTRUCTIONS: Final = (
    "You write faithful, concise summaries. Summarize the user's text in at most"
    " {sentences} sentences, in the text's language, adding nothing it does not say."
    ' Put the summary in the "summary" field.'
)


def extract_summary(text: str, sentences: int = 3) -> str:
    """The ``sentences`` sentences of ``text`` with the most frequent content words
    (normalised by length), kept in their order; short texts come back whole."""
    parts = [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]
    if len(parts) <= sentences:
        return " ".join(parts)
    words = [w.lower() for w in _WORD.findall(text)]
    frequency = Counter(w for w in words if w not in _STOPWORDS)

    def score(sentence: str) -> float:
        tokens = [w.lower() for w in _WORD.findall(sentence) if w.lower() not in _STOPWORDS]
        return sum(frequency[t] for t in tokens) / (len(tokens) ** 0.5) if tokens else 0.0

    ranked = sorted(range(len(parts)), key=lambda i: (-score(parts[i]), i))[:sentences]
    return " ".join(parts[i] for i in sorted(ranked))


class SummarizerState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    text: str
    sentences: int
    method: str
    output: dict[str, Any]


def choose_method(asked: str, model: str) -> Method:
    """The method of a run: the one asked for, else abstractive when there is a model;
    FAILED_PRECONDITION (naming ``AGENTMESH_LLM_DEFAULT_MODEL``) for abstractive with
    no model."""
    if asked == "extractive" or (not asked and not model):
        return "extractive"
    if not model:
        raise missing_setting(
            "an abstractive summary needs a model and none is configured (or give"
            " options.model; ask for method extractive to summarize without one)",
            "default_model",
        )
    return "abstractive"


def summarizer_agent(resources: AgentResources | None = None) -> AgentDefinition:
    """The summarizer; without ``resources`` (no model layer) it only extracts."""

    async def summarize(state: SummarizerState, config: RunnableConfig) -> dict[str, Any]:
        text = state.get("text") or last_user_text(state.get("messages", []))
        if not text.strip():
            raise InvalidArgument("input.text", "required: a text (or a message) to summarize")
        sentences = state.get("sentences") or DEFAULT_SENTENCES
        model = run_model(config) if resources is not None else ""
        method = choose_method(state.get("method", ""), model)
        if method == "abstractive" and resources is not None:
            prompt = [
                SystemMessage(content=INSTRUCTIONS.format(sentences=sentences)),
                HumanMessage(content=text),
            ]
            answer = await answer_structured(resources, config, prompt, SUMMARY_SCHEMA)
            summary = str(answer.value["summary"])
            reply = answer.message(summary)
        else:
            summary = await convert_sized(partial(extract_summary, text, sentences), len(text))
            reply = AIMessage(content=summary)
        # The per-run inputs are cleared, so a thread's next turn does not inherit them.
        return {
            "messages": [reply],
            "output": {"summary": summary, "method": method},
            "text": "",
            "sentences": 0,
            "method": "",
        }

    builder = StateGraph(SummarizerState)
    builder.add_node("summarize", summarize)
    builder.add_edge(START, "summarize")
    builder.add_edge("summarize", END)
    return define_agent(
        id="summarizer",
        display_name="Summarizer",
        description=(
            "Summarizes a text. Abstractive (written by the model) when a model is"
            " configured (options.model or AGENTMESH_LLM_DEFAULT_MODEL); extractive (its"
            " most representative sentences, offline) when not, or when the input asks"
            ' for method "extractive".'
        ),
        graph=builder,
        skills=[
            Skill(
                id="summarize",
                display_name="Summarize",
                description="Shortens a text to a few sentences.",
                examples=("summarize this article", "give me the gist of these notes"),
                tags=("text",),
            )
        ],
        input_schema={
            "type": "object",
            "properties": {
                "text": {"type": "string", "maxLength": MAX_TEXT_CHARS},
                "sentences": {"type": "integer", "minimum": 1, "maximum": MAX_SENTENCES},
                "method": {"enum": list(METHODS)},
            },
            "additionalProperties": False,
        },
        output_schema={
            "type": "object",
            "properties": {
                "summary": {"type": "string"},
                "method": {"enum": list(METHODS)},
            },
            "required": ["summary", "method"],
        },
        labels={"team": "platform", "offline": "true"},
    )
