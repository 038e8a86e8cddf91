"""Settings of the Conductor service (``AGENTMESH_CONDUCTOR_*``), loaded by the core
loader in its entry point; the settings every process shares stay in
:class:`agentmesh.core.settings.Settings`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from agentmesh.core.names import ID_PATTERN
from agentmesh.core.settings import ENV_PREFIX, Check, load_settings

PREFIX: Final = ENV_PREFIX + "CONDUCTOR_"
"""Every Conductor setting's variable starts with this: ``turn_timeout_s`` ⇄
``AGENTMESH_CONDUCTOR_TURN_TIMEOUT_S``."""


@dataclass(frozen=True)
class ConductorSettings:
    """What the Conductor service reads from its environment besides the shared settings."""

    default_agent: str = ""
    """The agent id that takes a turn naming no agent (strategy DEFAULT), e.g. ``echo``.
    Also the agent of a turn whose message no card matches well enough (below
    ``routing_threshold``). Empty: such a turn is FAILED_PRECONDITION (``NO_ROUTE``)."""

    max_input_bytes: int = 256 * 1024
    """Largest user message of a turn: its parts plus the structured input, in bytes
    (the Agent service's own limit also applies)."""

    turn_timeout_s: float = 600.0
    """Longest one turn may run; past it the turn ends with a DEADLINE_EXCEEDED error
    event. Also how long a turn's claim on its session lasts: a turn whose replica died
    blocks its session at most this long."""

    agent_card_ttl_s: float = 30.0
    """How long the service keeps an agent's card (its input schema) before asking the
    Agent service again."""

    tenant_watches: int = 100
    """Conversation streams (Converse and WatchConversation) one tenant may hold open at
    once, per replica."""

    watch_poll_s: float = 5.0
    """A stream reads the session's events again at least this often, even without a
    change notification (notifications go through Redis and may be lost)."""

    routing_threshold: float = 0.4
    """Least similarity score (0-1) for the closest agent card to take a turn naming
    no agent (strategy SIMILARITY); below it the default agent does (DEFAULT). Scores
    blend embedding similarity and term overlap (``domain/routing.py``)."""

    routing_lexical_weight: float = 0.5
    """Share (0-1) of term overlap in the similarity score; the rest is the cosine of
    Memory's embeddings. High suits the offline ``hash`` embedder, which knows no
    meaning; lower it with a semantic embedder (MiniLM, OpenAI)."""

    routing_supervisor: bool = True
    """Let an LLM pick the agent when a model is configured (``routing_model``, else
    ``AGENTMESH_LLM_DEFAULT_MODEL``); similarity decides when it fails. False:
    similarity only."""

    routing_model: str = ""
    """The supervisor's model as ``provider:name``; empty: the default model."""

    routing_timeout_s: float = 20.0
    """Longest the supervisor model may take to pick; past it similarity decides."""

    routing_max_agents: int = 100
    """Agent cards routing considers at most (the first of ListAgents)."""

    supervisor_review: bool = True
    """After the agent the supervisor model picked has answered, the model reviews the
    answer and may hand the turn to another agent (one more model call per supervised
    turn and hand-off). False: the supervisor only picks the first agent."""

    max_handoffs: int = 3
    """Hand-offs one turn takes at most (an agent whose run ends handing the turn to
    another agent); past it the turn ends with the answers so far. 0: none."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ConductorSettings:
        """Loads ``AGENTMESH_CONDUCTOR_*`` from ``environ`` (default: ``os.environ``)."""
        return load_settings(cls, environ, prefix=PREFIX)

    def checks(self) -> list[Check]:
        """Range checks of the Conductor settings."""
        default_ok = not self.default_agent or bool(ID_PATTERN.fullmatch(self.default_agent))
        return [
            ("default_agent", default_ok, "an agent id, e.g. echo (not agents/echo)"),
            ("max_input_bytes", 1 <= self.max_input_bytes <= 4 * 1024 * 1024, "1 B - 4 MiB"),
            ("turn_timeout_s", 1 <= self.turn_timeout_s <= 86_400, "1 s - 1 day"),
            ("agent_card_ttl_s", 0 <= self.agent_card_ttl_s <= 3600, "expected 0-3600"),
            ("tenant_watches", 1 <= self.tenant_watches <= 100_000, "expected 1-100000"),
            ("watch_poll_s", 0.05 <= self.watch_poll_s <= 60, "expected 0.05-60"),
            ("routing_threshold", 0 <= self.routing_threshold <= 1, "expected 0-1"),
            ("routing_lexical_weight", 0 <= self.routing_lexical_weight <= 1, "expected 0-1"),
            ("routing_timeout_s", 0.1 <= self.routing_timeout_s <= 600, "expected 0.1-600"),
            ("routing_max_agents", 1 <= self.routing_max_agents <= 1000, "expected 1-1000"),
            ("max_handoffs", 0 <= self.max_handoffs <= 20, "expected 0-20"),
        ]
