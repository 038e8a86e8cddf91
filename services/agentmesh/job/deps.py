"""What the Job service's RPCs need: settings, the pool, Redis, the dispatcher, the
agent catalog and the change feed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import asyncpg  # type: ignore[import-untyped]
import redis.asyncio

from agentmesh.core.changes import ChangeFeed
from agentmesh.core.idempotency import RequestIds
from agentmesh.core.limits import TenantLimiter
from agentmesh.core.settings import Settings
from agentmesh.job.catalog import AgentCatalog
from agentmesh.job.dispatch import Dispatcher
from agentmesh.job.settings import JobSettings

REQUEST_IDS_TABLE: Final = "job.request_ids"
"""Where the Job service keeps its idempotency keys."""


@dataclass(frozen=True)
class JobDeps:
    """The Job service's resources, built once by ``build_job``."""

    settings: JobSettings
    """The Job service's own settings (``AGENTMESH_JOB_*``)."""
    process: Settings
    """The settings every process shares (ports, limits, auth)."""
    pool: asyncpg.Pool
    """PostgreSQL; every table lives in schema ``job``."""
    redis: redis.asyncio.Redis
    """Redis: change notifications (the broker has its own connections)."""
    request_ids: RequestIds
    """Idempotency keys of CreateJob (``job.request_ids``)."""
    dispatcher: Dispatcher
    """Sends job messages to the workers."""
    agents: AgentCatalog
    """The Agent service's agents and their input schemas."""
    changes: ChangeFeed
    """Wakes watches when their job changes."""
    watches: TenantLimiter
    """Per-tenant limit on open WatchJob streams."""
