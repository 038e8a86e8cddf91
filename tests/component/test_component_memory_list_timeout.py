"""List and search queries get a shorter timeout than other statements
(AGENTMESH_DB_LIST_STATEMENT_TIMEOUT_MS): past it the call is DEADLINE_EXCEEDED
(QUERY_TIMEOUT), not UNAVAILABLE, and the replica keeps serving."""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped]
import grpc

from agentmesh.v1 import memory_pb2
from component.conftest import Backends, Metadata
from component.memory_helpers import error_info, expect_error, serve_memory


async def test_a_list_over_its_timeout_is_deadline_exceeded(
    backends: Backends, db: asyncpg.Pool, tenant_a: Metadata
) -> None:
    async with serve_memory(
        backends,
        AGENTMESH_DB_LIST_STATEMENT_TIMEOUT_MS="300",
        AGENTMESH_MEMORY_JANITOR_INTERVAL_S="0",
    ) as stub:
        # A table lock held by the test makes the list wait: deterministic, no sleep.
        async with db.acquire() as conn, conn.transaction():
            await conn.execute("LOCK TABLE memory.decisions IN ACCESS EXCLUSIVE MODE")
            error = await expect_error(
                stub.ListDecisions(
                    memory_pb2.ListDecisionsRequest(), metadata=tenant_a, timeout=20
                ),
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
            assert error_info(error).reason == "QUERY_TIMEOUT"
            # Other calls of the replica are not lists: served meanwhile.
            session = await stub.CreateSession(
                memory_pb2.CreateSessionRequest(session=memory_pb2.Session()),
                metadata=tenant_a,
                timeout=20,
            )
        # Lock released: the same list answers.
        await stub.ListDecisions(memory_pb2.ListDecisionsRequest(), metadata=tenant_a, timeout=20)
        assert session.name
