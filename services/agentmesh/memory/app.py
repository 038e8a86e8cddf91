"""Composition root of the Memory service: the one builder used by the process and by tests."""

from __future__ import annotations

import grpc

from agentmesh.core.db import DatabaseProbe, create_pool
from agentmesh.core.limits import TenantLimiter
from agentmesh.core.redis import create_redis, ping_redis
from agentmesh.core.server import ServiceSpec
from agentmesh.core.settings import Settings
from agentmesh.memory.deps import MemoryDeps, memory_request_ids
from agentmesh.memory.embedders import Embedder, build_embedder
from agentmesh.memory.indexer import Indexer
from agentmesh.memory.janitor import start_janitor, stop_janitor
from agentmesh.memory.quota_guard import TenantQuotas
from agentmesh.memory.servicer import memory_servicer
from agentmesh.memory.settings import MemorySettings
from agentmesh.memory.stores.memory_index import prepare_memory_store, search_session_settings
from agentmesh.v1 import memory_pb2, memory_pb2_grpc

SERVICE_NAME = memory_pb2.DESCRIPTOR.services_by_name["MemoryService"].full_name


async def build_memory(
    settings: Settings, memory: MemorySettings, embedder: Embedder | None = None
) -> ServiceSpec:
    """Wires the Memory service from the shared ``settings`` and its own ``memory``
    settings: PostgreSQL pool and Redis (both health-probed), the embedder named by the
    settings (tests may pass their own), the janitor, a background task from now
    until ``on_stop`` (``janitor.py``; none when ``janitor_interval_s`` is 0), and the
    indexer's loops (``indexer.py``; none when ``indexer_interval_s`` is 0)."""
    settings.require("database_url", "redis_url")
    memory.check_fits_pages(settings.page_max_bytes)
    chosen = embedder or build_embedder(memory, timeout_s=settings.client_deadline_ms / 1000)
    # Searches use these as connection defaults, so a search is one round trip
    # (no transaction just to SET LOCAL them); see memory_search.run_search.
    database_probe = DatabaseProbe(settings)
    pool = await create_pool(settings, server_settings=search_session_settings(memory))
    # Refuse to serve with a vector column, pgvector or HNSW parameters that do not
    # match the settings. The index itself is built by the migration step: the
    # service's role may not run DDL (docs/adr/0018).
    try:
        await prepare_memory_store(pool, memory)
    except BaseException:
        await pool.close()
        await database_probe.close()
        raise
    redis_client = create_redis(settings)
    indexer = Indexer(pool, memory)
    deps = MemoryDeps(
        settings=memory,
        process=settings,
        pool=pool,
        redis=redis_client,
        embedder=chosen,
        request_ids=memory_request_ids(memory),
        expensive=TenantLimiter(memory.tenant_concurrency, what="embedding or search"),
        quotas=TenantQuotas(pool, memory.quotas(), refresh_s=memory.quota_refresh_s),
        indexer=indexer,
    )
    servicer = memory_servicer(deps)

    janitor = start_janitor(settings, memory, redis_client)
    indexer.start()

    def register(server: grpc.aio.Server) -> None:
        memory_pb2_grpc.add_MemoryServiceServicer_to_server(servicer, server)

    async def close() -> None:
        # First: a pass in progress uses Redis (and its own database connection).
        await stop_janitor(janitor)
        await indexer.stop()  # before the pool it uses
        await pool.close()
        await database_probe.close()
        await redis_client.aclose()
        # Remote embedders hold an HTTP connection pool; local ones have nothing to close.
        close_embedder = getattr(chosen, "aclose", None)
        if close_embedder is not None:
            await close_embedder()

    return ServiceSpec(
        name="memory",
        service_names=[SERVICE_NAME],
        register=register,
        probes=[database_probe, lambda: ping_redis(redis_client)],
        on_stop=[close],
    )
