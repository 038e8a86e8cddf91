"""Composition root of the Job service: the one builder used by the process and by tests."""

from __future__ import annotations

import grpc

from agentmesh.core.db import DatabaseProbe, create_pool
from agentmesh.core.redis import create_redis, ping_redis
from agentmesh.core.server import ServiceSpec
from agentmesh.core.settings import Settings
from agentmesh.job.servicer import JobServicer
from agentmesh.v1 import job_pb2, job_pb2_grpc

SERVICE_NAME = job_pb2.DESCRIPTOR.services_by_name["JobService"].full_name


async def build_job(settings: Settings) -> ServiceSpec:
    """Wires the Job service: PostgreSQL (job records) and Redis (the Dramatiq broker)."""
    settings.require("database_url", "redis_url")
    database_probe = DatabaseProbe(settings)
    pool = await create_pool(settings)
    redis_client = create_redis(settings)
    servicer = JobServicer(pool, redis_client)  # type: ignore[abstract]  # see fill_unimplemented

    def register(server: grpc.aio.Server) -> None:
        job_pb2_grpc.add_JobServiceServicer_to_server(servicer, server)

    async def close() -> None:
        await pool.close()
        await database_probe.close()
        await redis_client.aclose()

    return ServiceSpec(
        name="job",
        service_names=[SERVICE_NAME],
        register=register,
        probes=[database_probe, lambda: ping_redis(redis_client)],
        on_stop=[close],
    )
