"""Token usage of model calls, read from LangChain's ``usage_metadata``.

Every provider package fills ``AIMessage.usage_metadata`` (``input_tokens``,
``output_tokens``, ``total_tokens``) from the provider's own usage report: OpenAI's
``usage`` (in streams, the last chunk when ``stream_options.include_usage`` is on, which
:func:`agentmesh.llm.models.build_chat_model` turns on), Anthropic's ``message_start``
and ``message_delta`` events, Bedrock's ``usage`` and stream ``metadata``. In a stream
the counts are spread over chunks: adding every chunk's usage gives the call's.
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult

MAX_TOKENS: int = 2**53
"""Largest count taken from a provider's report (larger ones are clamped): keeps sums
exact in JSON numbers and bounds what a faulty server can make us report."""


class TokenUsage(NamedTuple):
    """Tokens a call (or a run, summed) consumed: ``(input, output, total)``."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0

    def plus(self, other: TokenUsage) -> TokenUsage:
        """Both usages summed (``+`` on a tuple concatenates, so it is not overloaded)."""
        return TokenUsage(
            _clamp(self.input_tokens + other.input_tokens),
            _clamp(self.output_tokens + other.output_tokens),
            _clamp(self.total_tokens + other.total_tokens),
        )


def token_usage(message: BaseMessage) -> TokenUsage:
    """The usage an ``AIMessage`` or ``AIMessageChunk`` reports; zeros when it reports
    none (another message type, a server that sends no usage, a chunk before the last).
    A missing total is input + output."""
    metadata: Any = getattr(message, "usage_metadata", None)
    if not isinstance(metadata, dict):
        return TokenUsage()
    input_tokens = _count(metadata.get("input_tokens"))
    output_tokens = _count(metadata.get("output_tokens"))
    total_tokens = _count(metadata.get("total_tokens")) or _clamp(input_tokens + output_tokens)
    return TokenUsage(input_tokens, output_tokens, total_tokens)


class UsageMeter:
    """Adds up the usage of several calls (a run, a structured answer's attempts)."""

    def __init__(self) -> None:
        self.usage = TokenUsage()
        self.calls = 0

    def add(self, message: BaseMessage) -> TokenUsage:
        """Counts one call's answer; returns that call's usage."""
        usage = token_usage(message)
        self.usage = self.usage.plus(usage)
        self.calls += 1
        return usage


class UsageCallback(BaseCallbackHandler):
    """Counts the usage of every chat-model call made under a run's config, as LangChain
    reports each call's end: attempts that failed validation, calls of a node that later
    raised, subgraphs' calls, whatever the graph kept in its state or not. A cache hit
    reports no usage (nothing was spent)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # sync models report from worker threads
        self.meter = UsageMeter()

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        for generations in response.generations:
            for generation in generations:
                message = getattr(generation, "message", None)
                if isinstance(message, BaseMessage):
                    with self._lock:
                        self.meter.add(message)


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return _clamp(value)


def _clamp(value: int) -> int:
    return min(max(value, 0), MAX_TOKENS)
