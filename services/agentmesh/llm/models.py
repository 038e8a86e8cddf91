"""``provider:name`` → a LangChain chat model with this layer's timeouts and retries.

Providers:

- ``openai:<model>``: ``ChatOpenAI`` on the chat completions API, at api.openai.com or
  any OpenAI-compatible server (vLLM, Ollama, LM Studio) set by
  ``AGENTMESH_LLM_OPENAI_BASE_URL``;
- ``anthropic:<model>``: ``ChatAnthropic`` on the Messages API;
- ``bedrock:<model id>``: ``ChatBedrockConverse`` on Bedrock's Converse and
  ConverseStream API (the model id may itself hold colons:
  ``bedrock:anthropic.claude-3-5-haiku-20241022-v1:0``).

Retries are the provider SDKs' own, configured, not re-implemented: the openai and
anthropic SDKs retry 408, 409, 429, 5xx, timeouts and connection errors with exponential
backoff (0.5 s doubling, at most 8 s) less up to 25 % jitter, and wait what
``retry-after``/``retry-after-ms`` asks instead when it is at most two minutes (a longer
ask is not retried); botocore's ``standard`` mode retries throttling (429,
``ThrottlingException``), 500/502/503/504 and connection errors or timeouts with full
jitter (a random share of 2^attempt seconds for throttling), raised to what
``x-amz-retry-after`` asks, by at most 5 s. None of them retries another 4xx. The
tests prove each against servers that speak the providers' protocols.

Building a model is CPU work (the SDK clients load their service models and TLS
contexts: 0.2-0.4 s), and the provider packages are imported on first use (seconds for
boto3): build at start or through :class:`ChatModels`, which builds each model once, off
the event loop, and reuses it (a model holds its SDK's connection pool).
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable
from typing import Any, Final

from langchain_core.caches import BaseCache
from langchain_core.language_models import BaseChatModel
from pydantic import SecretStr

from agentmesh.core.errors import FailedPrecondition
from agentmesh.core.settings import env_var
from agentmesh.llm.settings import MAX_MODEL_CHARS, PREFIX, LlmSettings

PROVIDERS: Final = ("openai", "anthropic", "bedrock")
"""The providers a model reference may name, before its colon."""

OPENAI_DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"
"""Where ``openai:`` models go when ``AGENTMESH_LLM_OPENAI_BASE_URL`` is unset."""

NO_KEY: Final = "unused"
"""Key sent to an OpenAI-compatible server configured without one: the SDK refuses to
start without a key, and local servers (vLLM, Ollama, LM Studio) ignore it."""

_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*")
"""A provider's model name: letters, digits and ``._:/@+-`` (Bedrock ids and ARNs hold
colons and slashes, Ollama tags colons)."""

REASON_NOT_CONFIGURED: Final = "LLM_NOT_CONFIGURED"
"""Reason of the error when a setting a model needs is unset."""
REASON_BAD_MODEL: Final = "LLM_MODEL_INVALID"
"""Reason of the error when a model reference names no known provider or is malformed."""


def parse_model(model: str) -> tuple[str, str]:
    """``"provider:name"`` → ``(provider, name)``; raises FailedPrecondition
    (``LLM_MODEL_INVALID``) for an unknown provider or a malformed name."""
    provider, sep, name = model.partition(":")
    if len(model) > MAX_MODEL_CHARS or not sep or not _NAME.fullmatch(name):
        raise FailedPrecondition(
            REASON_BAD_MODEL,
            f"model {model[:MAX_MODEL_CHARS]!r}: expected provider:name with provider one of "
            f"{', '.join(PROVIDERS)} (at most {MAX_MODEL_CHARS} characters)",
            [("MODEL", model[:MAX_MODEL_CHARS], "expected provider:name")],
        )
    if provider not in PROVIDERS:
        raise FailedPrecondition(
            REASON_BAD_MODEL,
            f"model {model!r}: unknown provider {provider!r}; expected one of "
            f"{', '.join(PROVIDERS)}",
            [("MODEL", model, f"unknown provider {provider!r}")],
        )
    return provider, name


def resolve_model(model: str, settings: LlmSettings) -> str:
    """The model to use: ``model``, else ``AGENTMESH_LLM_DEFAULT_MODEL``; raises
    FailedPrecondition (``LLM_NOT_CONFIGURED``) when both are empty."""
    chosen = model or settings.default_model
    if not chosen:
        raise missing_setting("no model named and no default model", "default_model")
    return chosen


def build_chat_model(model: str, settings: LlmSettings) -> BaseChatModel:
    """A chat model for ``model`` (``provider:name``; empty: the default model), with
    ``settings.timeout_s`` per attempt and at most ``settings.max_attempts`` attempts.

    Raises FailedPrecondition: ``LLM_MODEL_INVALID`` for an unknown provider or a
    malformed reference, ``LLM_NOT_CONFIGURED`` (naming the variable to set) when a
    setting the provider needs is unset. CPU work: see the module docstring. Connects
    nothing; the model connects on its first call.
    """
    provider, name = parse_model(resolve_model(model, settings))
    return _BUILDERS[provider](name, settings)


class ChatModels:
    """The chat models of one process, each built once and reused.

    Owned by a process's composition root (never a module global); a model holds its
    SDK client and connection pool, so reusing it reuses connections. Thread-safe.
    """

    def __init__(self, settings: LlmSettings, cache: BaseCache | None = None) -> None:
        self.settings = settings
        self._cache = cache
        self._models: dict[str, BaseChatModel] = {}
        self._lock = threading.Lock()

    def get(self, model: str) -> BaseChatModel:
        """The model for ``model`` (empty: the default), built on first use in the
        calling thread; errors as :func:`build_chat_model`."""
        key = resolve_model(model, self.settings)
        with self._lock:
            found = self._models.get(key)
            if found is None:
                found = build_chat_model(key, self.settings)
                if self._cache is not None:  # the response cache, when configured
                    found = found.model_copy(update={"cache": self._cache})
                self._models[key] = found
            return found

    async def aget(self, model: str) -> BaseChatModel:
        """:meth:`get` for async code: a model already built comes at once, a new one is
        built in a worker thread (building is CPU work)."""
        key = resolve_model(model, self.settings)
        found = self._models.get(key)
        if found is not None:
            return found
        return await asyncio.to_thread(self.get, key)


def missing_setting(what: str, *fields: str) -> FailedPrecondition:
    """FAILED_PRECONDITION (``LLM_NOT_CONFIGURED``) for ``what``, naming the variables of
    the LLM ``fields`` (e.g. ``default_model`` → ``AGENTMESH_LLM_DEFAULT_MODEL``) to set."""
    variables = [env_var(field, PREFIX) for field in fields]
    return FailedPrecondition(
        REASON_NOT_CONFIGURED,
        f"{what}: set {' or '.join(variables)}",
        [("SETTING", variable, "unset") for variable in variables],
    )


def _openai(name: str, settings: LlmSettings) -> BaseChatModel:
    from langchain_openai import ChatOpenAI  # noqa: PLC0415 - heavy, imported on first use

    base_url = settings.openai_base_url or OPENAI_DEFAULT_BASE_URL
    api_key = settings.openai_api_key
    if not api_key:
        if base_url == OPENAI_DEFAULT_BASE_URL:
            raise missing_setting(
                f"model openai:{name} at {OPENAI_DEFAULT_BASE_URL}", "openai_api_key"
            )
        api_key = NO_KEY
    return ChatOpenAI(
        model=name,
        base_url=base_url,
        api_key=SecretStr(api_key),
        timeout=settings.timeout_s,
        max_retries=settings.max_attempts - 1,
        # Usage in streams too (stream_options.include_usage): the runtime reports it
        # per run. LangChain turns it off by default for a custom base URL; vLLM,
        # Ollama and LM Studio all support it.
        stream_usage=True,
    )


def _anthropic(name: str, settings: LlmSettings) -> BaseChatModel:
    from langchain_anthropic import ChatAnthropic  # noqa: PLC0415 - imported on first use

    if not settings.anthropic_api_key:
        raise missing_setting(f"model anthropic:{name}", "anthropic_api_key")
    kwargs: dict[str, Any] = {}
    if settings.anthropic_base_url:
        kwargs["base_url"] = settings.anthropic_base_url
    return ChatAnthropic(  # type: ignore[call-arg]  # pydantic alias: timeout
        model=name,
        api_key=SecretStr(settings.anthropic_api_key),
        timeout=settings.timeout_s,
        max_retries=settings.max_attempts - 1,
        **kwargs,
    )


def _bedrock(name: str, settings: LlmSettings) -> BaseChatModel:
    # botocore ships no type information.
    from botocore.config import Config  # type: ignore[import-untyped]  # noqa: PLC0415
    from langchain_aws import ChatBedrockConverse  # noqa: PLC0415 - heavy, on first use

    if not settings.bedrock_region:
        raise missing_setting(f"model bedrock:{name}", "bedrock_region")
    config = Config(
        connect_timeout=settings.timeout_s,
        read_timeout=settings.timeout_s,
        retries={"total_max_attempts": settings.max_attempts, "mode": "standard"},
    )
    kwargs: dict[str, Any] = {}
    if settings.bedrock_endpoint_url:
        kwargs["endpoint_url"] = settings.bedrock_endpoint_url
    return ChatBedrockConverse(
        model=name,
        region_name=settings.bedrock_region,
        config=config,
        **kwargs,
    )


_BUILDERS: Final[dict[str, Callable[[str, LlmSettings], BaseChatModel]]] = {
    "openai": _openai,
    "anthropic": _anthropic,
    "bedrock": _bedrock,
}
