"""MemoryService adapter. The storage behind it arrives with the Memory issue; until
then every RPC answers UNIMPLEMENTED naming that work, while health, auth and the
contract are already real."""

from __future__ import annotations

from typing import Final

import asyncpg  # type: ignore[import-untyped]
import redis.asyncio

from agentmesh.core.contract import fill_unimplemented
from agentmesh.v1 import memory_pb2, memory_pb2_grpc

_PLAN: Final = "Memory service storage (issue 4)"


@fill_unimplemented(memory_pb2.DESCRIPTOR.services_by_name["MemoryService"], {"*": _PLAN})
class MemoryServicer(memory_pb2_grpc.MemoryServiceServicer):
    """Holds the service's connections; the RPCs come with issue 4."""

    def __init__(self, pool: asyncpg.Pool, redis_client: redis.asyncio.Redis) -> None:
        self._pool = pool
        self._redis = redis_client
