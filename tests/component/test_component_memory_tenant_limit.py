"""One tenant's burst of embedding work is capped per replica: its extra calls are
RESOURCE_EXHAUSTED at once while another tenant's calls go through."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import cast

import grpc
import pytest

from agentmesh.core.server import start_server
from agentmesh.memory.app import build_memory
from agentmesh.v1 import memory_pb2, memory_pb2_grpc
from component.conftest import Backends, Metadata, memory_settings
from component.memory_helpers import Stub, expect_error, uid


class _GatedEmbedder:
    """Holds every call until the test opens the gate; counts calls waiting."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.waiting = 0
        self._arrived = asyncio.Condition()

    async def wait_for_calls(self, count: int) -> None:
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: self.waiting >= count), 30)

    @property
    def dimension(self) -> int:
        return 384

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        async with self._arrived:
            self.waiting += 1
            self._arrived.notify_all()
        await self.gate.wait()
        return [[1.0] + [0.0] * 383 for _ in texts]


@pytest.fixture
async def gated(backends: Backends) -> AsyncIterator[tuple[Stub, _GatedEmbedder]]:
    config = memory_settings(
        backends,
        AGENTMESH_MEMORY_TENANT_CONCURRENCY="2",
        AGENTMESH_MEMORY_JANITOR_INTERVAL_S="0",
    )
    embedder = _GatedEmbedder()
    running = await start_server(config.settings, await build_memory(*config, embedder=embedder))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield cast("Stub", memory_pb2_grpc.MemoryServiceStub(channel)), embedder
    finally:
        await running.stop(0)


def _create(namespace: str, text: str) -> memory_pb2.CreateMemoryRequest:
    return memory_pb2.CreateMemoryRequest(
        memory=memory_pb2.Memory(namespace=namespace, content=text)
    )


async def test_a_tenant_over_its_limit_is_refused_and_another_is_served(
    gated: tuple[Stub, _GatedEmbedder], tenant_a: Metadata, tenant_b: Metadata
) -> None:
    stub, embedder = gated
    namespace = f"limit/{uid()}"
    # Namespaces of their own: the gated vectors are all equal, and equal vectors in one
    # namespace would merge into one memory.
    held = [
        asyncio.ensure_future(
            stub.CreateMemory(_create(f"{namespace}/{i}", f"a {i}"), metadata=tenant_a)
        )
        for i in range(2)
    ]
    await embedder.wait_for_calls(2)
    # The third of tenant A's calls is refused at once, whichever RPC it is.
    for call in (
        stub.CreateMemory(_create(namespace, "a 3"), metadata=tenant_a),
        stub.SearchMemories(
            memory_pb2.SearchMemoriesRequest(text="x", namespace_prefix=namespace),
            metadata=tenant_a,
        ),
    ):
        error = await expect_error(call, grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert "in flight" in (error.details() or "")
    # Tenant B is not affected: its call reaches the embedder too.
    other = asyncio.ensure_future(
        stub.CreateMemory(_create(f"limit/{uid()}", "b"), metadata=tenant_b)
    )
    await embedder.wait_for_calls(3)
    embedder.gate.set()
    created = await asyncio.gather(*held, other)
    assert len({memory.name for memory in created}) == 3
    # With its calls done, tenant A is served again.
    await stub.CreateMemory(_create(namespace, "a 4"), metadata=tenant_a)
