"""Composition root of the Conductor service: the one builder used by the process and
by tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from agentmesh.conductor.deps import ConductorDeps
from agentmesh.conductor.downstream import (
    AGENT_RETRIES,
    JOB_RETRIES,
    MEMORY_RETRIES,
    Downstream,
)
from agentmesh.conductor.routing import Router
from agentmesh.conductor.servicer import ConductorServicer
from agentmesh.conductor.settings import ConductorSettings
from agentmesh.conductor.turns import CONVERSATION_CHANGES, TurnRunner
from agentmesh.core.changes import ChangeFeed
from agentmesh.core.channels import open_channel
from agentmesh.core.db import DatabaseProbe, create_pool
from agentmesh.core.limits import TenantLimiter
from agentmesh.core.redis import create_redis, ping_redis
from agentmesh.core.server import ServiceSpec
from agentmesh.core.settings import Settings
from agentmesh.llm.models import ChatModels
from agentmesh.llm.settings import LlmSettings
from agentmesh.v1 import conductor_pb2, conductor_pb2_grpc

SERVICE_NAME = conductor_pb2.DESCRIPTOR.services_by_name["ConductorService"].full_name


async def build_conductor(
    settings: Settings, conductor: ConductorSettings | None = None, llm: LlmSettings | None = None
) -> ServiceSpec:
    """Wires the Conductor service: PostgreSQL (turns and their events), Redis (change
    notifications of conversations), Memory (``AGENTMESH_MEMORY_ADDR``: sessions,
    messages, decisions), Agent (``AGENTMESH_AGENT_ADDR``: cards and runs) and, when
    set, Job (``AGENTMESH_JOB_ADDR``: background turns).

    With a model (``AGENTMESH_LLM_DEFAULT_MODEL`` or ``AGENTMESH_CONDUCTOR_ROUTING_MODEL``)
    an LLM supervisor picks the agent of a turn that names none; similarity over
    Memory's embeddings picks it otherwise, and when the model fails.

    Readiness probes only what it owns (PostgreSQL, Redis); Memory and Agent are reached
    through Envoy, which balances over their healthy replicas (ADR 0007).
    """
    settings.require("database_url", "redis_url", "memory_addr", "agent_addr")
    conductor = conductor or ConductorSettings()
    llm = llm or LlmSettings()
    database_probe = DatabaseProbe(settings)
    pool = await create_pool(settings)
    redis_client = create_redis(settings)
    memory_channel = open_channel(
        settings.memory_addr or "", settings, idempotent_methods=MEMORY_RETRIES
    )
    agent_channel = open_channel(
        settings.agent_addr or "", settings, idempotent_methods=AGENT_RETRIES
    )
    job_channel = (
        open_channel(settings.job_addr, settings, idempotent_methods=JOB_RETRIES)
        if settings.job_addr
        else None
    )
    downstream = Downstream(
        memory_channel, agent_channel, card_ttl_s=conductor.agent_card_ttl_s, job=job_channel
    )
    changes = ChangeFeed(redis_client, CONVERSATION_CHANGES)
    router = Router(conductor, downstream, ChatModels(llm))
    deps = ConductorDeps(
        settings=conductor,
        process=settings,
        pool=pool,
        redis=redis_client,
        downstream=downstream,
        changes=changes,
        watches=TenantLimiter(conductor.tenant_watches, what="conversation stream"),
        turns=TurnRunner(conductor, pool, redis_client, downstream, changes, router),
        router=router,
    )
    servicer = ConductorServicer(deps)
    changes.start()

    def register(server: grpc.aio.Server) -> None:
        conductor_pb2_grpc.add_ConductorServiceServicer_to_server(servicer, server)

    async def close() -> None:
        await deps.turns.stop()
        await changes.stop()
        await memory_channel.close(None)
        await agent_channel.close(None)
        if job_channel is not None:
            await job_channel.close(None)
        await pool.close()
        await database_probe.close()
        await redis_client.aclose()

    on_stop: list[Callable[[], Awaitable[None]]] = [close]
    return ServiceSpec(
        name="conductor",
        service_names=[SERVICE_NAME],
        register=register,
        probes=[database_probe, lambda: ping_redis(redis_client)],
        on_stop=on_stop,
    )
