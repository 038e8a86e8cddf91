"""Settings of the Agent service: ``AGENTMESH_AGENT_*`` variables.

Loaded by the core loader in the service's entry point and passed to ``build_agent``;
the settings every process shares stay in :class:`agentmesh.core.settings.Settings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from agentmesh.core.settings import ENV_PREFIX, Check, load_settings

PREFIX: Final = ENV_PREFIX + "AGENT_"
"""Every Agent setting's variable starts with this: ``graphs`` ⇄ ``AGENTMESH_AGENT_GRAPHS``."""
MAX_STEPS_LIMIT: Final = 1000
"""Largest ``RunOptions.max_steps`` a deployment may allow."""


@dataclass(frozen=True)
class AgentSettings:
    """Everything the Agent service reads from its environment."""

    graphs: str = ""
    """Agents to serve besides the built-in ones and those installed packages declare
    (entry-point group ``agentmesh.agents``): comma-separated ``module:attribute`` paths
    to :class:`agentmesh.agent.definition.AgentDefinition` objects, the way
    ``langgraph.json`` names graphs, e.g. ``my_agents.support:agent``."""

    max_input_bytes: int = 256 * 1024
    """Largest run input: the structured input as JSON plus the parts, in bytes."""

    default_max_steps: int = 25
    """Graph steps a run may take when the request does not say (LangGraph's recursion
    limit)."""

    max_steps: int = 100
    """Most graph steps a request may ask for (``RunOptions.max_steps``)."""

    run_timeout_s: float = 300.0
    """Longest a run may take when the caller set no deadline (a deadline shorter than
    this wins)."""

    tenant_runs_per_minute: int = 6000
    """Agent runs one tenant may start per minute, across every replica (through Redis
    when ``AGENTMESH_REDIS_URL`` is set, else per replica); 0: no limit. Past it a run
    is RESOURCE_EXHAUSTED with QuotaFailure and RetryInfo."""

    tenant_tokens_per_day: int = 5_000_000
    """LLM tokens one tenant's runs may use per day, as above; 0: no limit."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AgentSettings:
        """Loads ``AGENTMESH_AGENT_*`` from ``environ`` (default: ``os.environ``)."""
        return load_settings(cls, environ, prefix=PREFIX)

    def checks(self) -> list[Check]:
        """Range checks of the Agent settings."""
        return [
            ("max_input_bytes", 1 <= self.max_input_bytes <= 4 * 1024 * 1024, "1 B - 4 MiB"),
            ("max_steps", 1 <= self.max_steps <= MAX_STEPS_LIMIT, f"1-{MAX_STEPS_LIMIT}"),
            (
                "default_max_steps",
                1 <= self.default_max_steps <= self.max_steps,
                "1 to AGENTMESH_AGENT_MAX_STEPS",
            ),
            ("run_timeout_s", 0 < self.run_timeout_s <= 86_400, "expected 0-86400"),
            ("tenant_runs_per_minute", self.tenant_runs_per_minute >= 0, "expected >= 0"),
            ("tenant_tokens_per_day", self.tenant_tokens_per_day >= 0, "expected >= 0"),
        ]
