"""Embedding never holds the service: the largest batch a client may send is embedded
off the event loop while health and another tenant's calls keep answering; a batch over
the content bound is refused before anything is embedded."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentmesh.core.server import RunningServer
from agentmesh.memory.rpcs.memories_validation import MAX_BATCH, MAX_BATCH_CONTENT_CHARS
from agentmesh.v1 import memory_pb2
from component.conftest import Metadata
from component.memory_helpers import Stub, expect_invalid, uid

DEADLINE_S = 5.0
"""Of each probing call: generous on a shared machine, far below what a loop held for
the whole batch would cost them."""


def _batch(namespace: str, count: int, chars: int) -> memory_pb2.BatchCreateMemoriesRequest:
    words = "aisle window seat flight hotel reminder budget meeting "
    text = (words * (chars // len(words) + 1))[:chars]
    return memory_pb2.BatchCreateMemoriesRequest(
        requests=[
            memory_pb2.CreateMemoryRequest(
                memory=memory_pb2.Memory(namespace=namespace, content=f"{i} {text}"[:chars])
            )
            for i in range(count)
        ]
    )


async def test_the_largest_batch_leaves_health_and_other_tenants_answering(
    memory: Stub, memory_server: RunningServer, tenant_a: Metadata, tenant_b: Metadata
) -> None:
    session = await memory.CreateSession(memory_pb2.CreateSessionRequest(), metadata=tenant_b)
    request = _batch(f"load/{uid()}", MAX_BATCH, MAX_BATCH_CONTENT_CHARS // MAX_BATCH)
    assert sum(len(r.memory.content) for r in request.requests) <= MAX_BATCH_CONTENT_CHARS

    answered = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{memory_server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        batch = asyncio.ensure_future(
            memory.BatchCreateMemories(request, metadata=tenant_a, timeout=120)
        )
        while not batch.done():
            got = await memory.GetSession(
                memory_pb2.GetSessionRequest(name=session.name),
                metadata=tenant_b,
                timeout=DEADLINE_S,
            )
            assert got.name == session.name
            checked = await health.Check(health_pb2.HealthCheckRequest(), timeout=DEADLINE_S)
            assert checked.status == health_pb2.HealthCheckResponse.SERVING
            answered += 1
        created = await batch
    assert len(created.memories) == MAX_BATCH
    assert answered >= 1  # the other tenant was served while the batch ran


@pytest.mark.parametrize("count", [MAX_BATCH, 70])
async def test_a_batch_over_the_content_bound_is_refused(
    memory: Stub, tenant_a: Metadata, count: int
) -> None:
    chars = MAX_BATCH_CONTENT_CHARS // count + 1
    request = _batch(f"load/{uid()}", count, min(chars, 16_384))
    assert sum(len(r.memory.content) for r in request.requests) > MAX_BATCH_CONTENT_CHARS
    await expect_invalid(memory.BatchCreateMemories(request, metadata=tenant_a), "requests")
