"""Settings of the LLM provider layer: ``AGENTMESH_LLM_*`` variables.

Every process that calls a model (Agent, Conductor, worker) loads them with the core
loader (:func:`agentmesh.core.settings.load_settings`) in its entry point and passes them
to its builder. Nothing here is required at start: a provider's settings are checked
when a model of that provider is built (:func:`agentmesh.llm.models.build_chat_model`),
so a mesh whose agents need no LLM runs without any.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from agentmesh.core.settings import ENV_PREFIX, Check, load_settings

PREFIX: Final = ENV_PREFIX + "LLM_"
"""Every LLM setting's variable starts with this: ``timeout_s`` ⇄ ``AGENTMESH_LLM_TIMEOUT_S``."""

MAX_TIMEOUT_S: Final = 3600.0
"""Longest per-attempt timeout an operator may set (an hour)."""
MAX_ATTEMPTS: Final = 10
"""Most attempts of one call (provider retries, structured-output rounds)."""
MAX_MODEL_CHARS: Final = 256
"""Longest ``provider:name`` model reference."""
MAX_URL_CHARS: Final = 2048
"""Longest base or endpoint URL."""


@dataclass(frozen=True)
class LlmSettings:
    """Everything the LLM provider layer reads from its environment."""

    default_model: str = ""
    """Model used when an agent names none, as ``provider:name``: ``openai:gpt-4.1-mini``,
    ``anthropic:claude-sonnet-4-5``, ``bedrock:anthropic.claude-3-5-haiku-20241022-v1:0``.
    Empty: no default; an agent without its own model then cannot call an LLM."""

    openai_base_url: str = ""
    """Base URL of the OpenAI-compatible chat completions API, up to ``/v1``. Empty:
    ``https://api.openai.com/v1``. Point it at vLLM, Ollama
    (``http://127.0.0.1:11434/v1``) or LM Studio to use them through ``openai:`` models."""

    openai_api_key: str = ""
    """Bearer key of the OpenAI-compatible API; required for api.openai.com, optional for
    a local server set by ``openai_base_url`` (those ignore it)."""

    anthropic_base_url: str = ""
    """Base URL of the Anthropic Messages API (without ``/v1``). Empty:
    ``https://api.anthropic.com``."""

    anthropic_api_key: str = ""
    """API key of Anthropic; required by ``anthropic:`` models."""

    bedrock_region: str = ""
    """AWS region of Bedrock, e.g. ``us-east-1``; required by ``bedrock:`` models.
    Credentials come from the AWS default chain (environment, profile, IRSA, instance
    role), never from these settings."""

    bedrock_endpoint_url: str = ""
    """Bedrock runtime endpoint; empty: the region's public endpoint. Set it for a VPC
    endpoint, or for tests against a local server."""

    timeout_s: float = 60.0
    """Timeout of each attempt of a model call, in seconds: connecting, and each wait for
    bytes of the answer (a stream may last longer as long as it keeps sending). A call
    takes at most about ``max_attempts`` times this, plus the backoff between attempts."""

    max_attempts: int = 3
    """Attempts of one model call (1 = no retry). Retried: 429, 5xx, 408/409 and
    timeouts or connection errors, with exponential backoff and jitter, waiting what
    the provider's ``retry-after`` asks when it says. Never retried: other 4xx."""

    structured_attempts: int = 3
    """Model calls one structured answer may take: after an answer that is not JSON
    matching the schema, the validation error goes back to the model, until this many
    calls were made."""

    cache_ttl_s: int = 0
    """Seconds a model's answer is kept in the Redis response cache and given again for
    the same messages, model and parameters (no provider call, no tokens); 0: no cache.
    Needs ``AGENTMESH_REDIS_URL``."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LlmSettings:
        """Loads ``AGENTMESH_LLM_*`` from ``environ`` (default: ``os.environ``); raises
        ``ConfigError`` naming every malformed or out-of-range variable."""
        return load_settings(cls, environ, prefix=PREFIX)

    def checks(self) -> list[Check]:
        """Range checks of the LLM settings."""
        return [
            ("cache_ttl_s", 0 <= self.cache_ttl_s <= 30 * 86_400, "expected 0-2592000"),
            (
                "default_model",
                self.default_model == ""
                or (
                    len(self.default_model) <= MAX_MODEL_CHARS
                    and ":" in self.default_model.strip(":")
                ),
                f"expected provider:name (at most {MAX_MODEL_CHARS} characters) or empty",
            ),
            *(
                (name, _url_ok(getattr(self, name)), "expected an http(s):// URL or empty")
                for name in ("openai_base_url", "anthropic_base_url", "bedrock_endpoint_url")
            ),
            (
                "bedrock_region",
                len(self.bedrock_region) <= 64
                and all(c.isalnum() or c == "-" for c in self.bedrock_region),
                "expected an AWS region such as us-east-1",
            ),
            (
                "timeout_s",
                0 < self.timeout_s <= MAX_TIMEOUT_S,
                f"expected > 0, at most {MAX_TIMEOUT_S:g}",
            ),
            ("max_attempts", 1 <= self.max_attempts <= MAX_ATTEMPTS, f"expected 1-{MAX_ATTEMPTS}"),
            (
                "structured_attempts",
                1 <= self.structured_attempts <= MAX_ATTEMPTS,
                f"expected 1-{MAX_ATTEMPTS}",
            ),
        ]


def _url_ok(url: str) -> bool:
    return url == "" or (
        len(url) <= MAX_URL_CHARS and url.startswith(("http://", "https://")) and " " not in url
    )
