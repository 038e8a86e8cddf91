"""What the Conductor's RPCs need: settings, the pool, Redis, the calls to Memory and
Agent, the change feed, the turn runner and the router."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg  # type: ignore[import-untyped]
import redis.asyncio

from agentmesh.conductor.downstream import Downstream
from agentmesh.conductor.routing import Router
from agentmesh.conductor.settings import ConductorSettings
from agentmesh.conductor.turns import TurnRunner
from agentmesh.core.changes import ChangeFeed
from agentmesh.core.limits import TenantLimiter
from agentmesh.core.settings import Settings


@dataclass(frozen=True)
class ConductorDeps:
    """The Conductor service's resources, built once by ``build_conductor``."""

    settings: ConductorSettings
    """The Conductor's own settings (``AGENTMESH_CONDUCTOR_*``)."""
    process: Settings
    """The settings every process shares (ports, limits, auth)."""
    pool: asyncpg.Pool
    """PostgreSQL; every table lives in schema ``conductor``."""
    redis: redis.asyncio.Redis
    """Redis: change notifications of conversations."""
    downstream: Downstream
    """Memory (sessions, messages, decisions) and Agent (cards, runs)."""
    changes: ChangeFeed
    """Wakes conversation streams when their session has a new event."""
    watches: TenantLimiter
    """Per-tenant limit on open Converse and WatchConversation streams."""
    turns: TurnRunner
    """Starts turns and runs them to their end."""
    router: Router
    """Picks the agent of a turn that names none (supervisor model, else similarity)."""
