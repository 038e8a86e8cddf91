"""What every Memory RPC group needs: settings, the pool, Redis and the embedder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import asyncpg  # type: ignore[import-untyped]
import redis.asyncio

from agentmesh.core.idempotency import RequestIds
from agentmesh.core.limits import TenantLimiter
from agentmesh.core.settings import Settings
from agentmesh.memory.embedders import Embedder
from agentmesh.memory.indexer import Indexer
from agentmesh.memory.quota_guard import TenantQuotas
from agentmesh.memory.settings import MemorySettings

REQUEST_IDS_TABLE: Final = "memory.request_ids"
"""Where the Memory service keeps its idempotency keys."""


def memory_request_ids(settings: MemorySettings) -> RequestIds:
    """The Memory service's idempotency keys, remembered ``request_id_ttl_s``."""
    return RequestIds(REQUEST_IDS_TABLE, ttl_s=settings.request_id_ttl_s)


@dataclass(frozen=True)
class MemoryDeps:
    """The Memory service's resources, built once by ``build_memory``."""

    settings: MemorySettings
    """The Memory service's own settings (``AGENTMESH_MEMORY_*``)."""
    process: Settings
    """The settings every process shares (ports, limits, auth)."""
    pool: asyncpg.Pool
    """PostgreSQL; every table lives in schema ``memory``."""
    redis: redis.asyncio.Redis
    """Redis: working memory."""
    embedder: Embedder
    """Turns memory content and queries into vectors."""
    request_ids: RequestIds
    """Idempotency keys of creates (``memory.request_ids``)."""
    expensive: TenantLimiter
    """Per-tenant limit on embedding and search calls (``tenant_concurrency``)."""
    quotas: TenantQuotas
    """Per-tenant storage quotas, checked by every write that stores more."""
    indexer: Indexer
    """Adds imported memories to the HNSW index in the background; imports wake it."""
