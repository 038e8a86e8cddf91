"""JobService adapter. Job records and execution arrive with the Job issue; until then
every RPC answers UNIMPLEMENTED naming that work."""

from __future__ import annotations

from typing import Final

import asyncpg  # type: ignore[import-untyped]
import redis.asyncio

from agentmesh.core.contract import fill_unimplemented
from agentmesh.v1 import job_pb2, job_pb2_grpc

_PLAN: Final = "durable jobs (records, Dramatiq execution, watch), the Job service issue"


@fill_unimplemented(job_pb2.DESCRIPTOR.services_by_name["JobService"], {"*": _PLAN})
class JobServicer(job_pb2_grpc.JobServiceServicer):
    """Holds the service's connections; the RPCs come with the Job issue."""

    def __init__(self, pool: asyncpg.Pool, redis_client: redis.asyncio.Redis) -> None:
        self._pool = pool
        self._redis = redis_client
