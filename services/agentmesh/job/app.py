"""Composition root of the Job service: the one builder used by the process and by tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from agentmesh.core.changes import ChangeFeed
from agentmesh.core.channels import open_channel
from agentmesh.core.db import DatabaseProbe, create_pool
from agentmesh.core.idempotency import RequestIds
from agentmesh.core.limits import TenantLimiter
from agentmesh.core.redis import create_redis, ping_redis
from agentmesh.core.server import ServiceSpec
from agentmesh.core.settings import Settings
from agentmesh.job.broker import client_broker
from agentmesh.job.catalog import AgentCatalog
from agentmesh.job.deps import REQUEST_IDS_TABLE, JobDeps
from agentmesh.job.dispatch import Dispatcher
from agentmesh.job.servicer import JobServicer
from agentmesh.job.settings import JobSettings
from agentmesh.job.stores.jobs import JOB_CHANGES
from agentmesh.job.sweeper import Sweeper
from agentmesh.v1 import agent_pb2, job_pb2, job_pb2_grpc

SERVICE_NAME = job_pb2.DESCRIPTOR.services_by_name["JobService"].full_name
_AGENT_LOOKUPS = ((agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name, "GetAgent"),)


async def build_job(settings: Settings, job: JobSettings | None = None) -> ServiceSpec:
    """Wires the Job service: PostgreSQL (job records), Redis (the Dramatiq broker it
    sends with, change notifications, the sweeper's lock), the Agent service (agents'
    input schemas, through ``AGENTMESH_AGENT_ADDR``), and the sweeper, a background
    task from now until ``on_stop``."""
    settings.require("database_url", "redis_url", "agent_addr")
    job = job or JobSettings()
    database_probe = DatabaseProbe(settings)
    pool = await create_pool(settings)
    redis_client = create_redis(settings)
    agent_channel = open_channel(
        settings.agent_addr or "", settings, idempotent_methods=_AGENT_LOOKUPS
    )
    dispatcher = Dispatcher(client_broker(settings))
    deps = JobDeps(
        settings=job,
        process=settings,
        pool=pool,
        redis=redis_client,
        request_ids=RequestIds(REQUEST_IDS_TABLE, ttl_s=job.request_id_ttl_s),
        dispatcher=dispatcher,
        agents=AgentCatalog(
            agent_channel, ttl_s=job.agent_card_ttl_s, timeout_s=settings.client_deadline_ms / 1000
        ),
        changes=ChangeFeed(redis_client, JOB_CHANGES),
        watches=TenantLimiter(job.tenant_watches, what="job watch"),
    )
    servicer = JobServicer(deps)
    sweeper = Sweeper(job, pool, redis_client, dispatcher)
    deps.changes.start()
    sweeper.start()

    def register(server: grpc.aio.Server) -> None:
        job_pb2_grpc.add_JobServiceServicer_to_server(servicer, server)

    async def close() -> None:
        await sweeper.stop()
        await deps.changes.stop()
        await agent_channel.close(None)
        dispatcher.close()
        await pool.close()
        await database_probe.close()
        await redis_client.aclose()

    on_stop: list[Callable[[], Awaitable[None]]] = [close]
    return ServiceSpec(
        name="job",
        service_names=[SERVICE_NAME],
        register=register,
        probes=[database_probe, lambda: ping_redis(redis_client)],
        on_stop=on_stop,
    )
