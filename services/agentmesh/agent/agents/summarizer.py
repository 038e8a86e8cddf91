"""``agents/summarizer``: an extractive summary with no model — the sentences whose
words are most frequent in the text, in their original order."""

from __future__ import annotations

import re
from collections import Counter
from typing import Annotated, Any, Final, TypedDict

from langchain_core.messages import AIMessage, AnyMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from agentmesh.agent.definition import AgentDefinition, define_agent
from agentmesh.agent.registry import Skill
from agentmesh.agent.runtime.events import last_user_text

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
    output: dict[str, Any]


def _summarize(state: SummarizerState) -> dict[str, Any]:
    text = state.get("text") or last_user_text(state.get("messages", []))
    summary = extract_summary(text, state.get("sentences") or 3)
    return {
        "messages": [AIMessage(content=summary)],
        "output": {"summary": summary, "method": "extractive"},
        "text": "",
    }


def summarizer_agent() -> AgentDefinition:
    builder = StateGraph(SummarizerState)
    builder.add_node("summarize", _summarize)
    builder.add_edge(START, "summarize")
    builder.add_edge("summarize", END)
    return define_agent(
        id="summarizer",
        display_name="Summarizer",
        description=(
            "Summarizes a text: extractive (its most representative sentences) with no"
            " model configured."
        ),
        graph=builder,
        skills=[
            Skill(
                id="summarize",
                display_name="Summarize",
                description="Shortens a text to its key sentences.",
                examples=("summarize this article", "give me the gist of these notes"),
                tags=("text",),
            )
        ],
        input_schema={
            "type": "object",
            "properties": {
                "text": {"type": "string"},
                "sentences": {"type": "integer", "minimum": 1, "maximum": MAX_SENTENCES},
            },
            "additionalProperties": False,
        },
        output_schema={
            "type": "object",
            "properties": {"summary": {"type": "string"}, "method": {"type": "string"}},
        },
        labels={"team": "platform", "offline": "true"},
    )
