"""EmbedTexts over real gRPC: the vectors of the embedder memory search uses (a text's
vector scores 1.0 against the memory stored with that text), bounded in count and
characters with every bad text named, and within the tenant's limit on embedding
calls."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Sequence
from typing import cast

import grpc
import pytest

from agentmesh.core.server import start_server
from agentmesh.memory.app import build_memory
from agentmesh.v1 import memory_pb2, memory_pb2_grpc
from component.conftest import Backends, Metadata, memory_settings
from component.memory_helpers import Stub, expect_error, field_violations, uid


def _embed(*texts: str) -> memory_pb2.EmbedTextsRequest:
    return memory_pb2.EmbedTextsRequest(texts=texts)


async def test_vectors_are_unit_length_in_order_and_named_by_their_embedder(
    memory: Stub, tenant_a: Metadata
) -> None:
    response = await memory.EmbedTexts(
        _embed("what is 17 * 23", "summarize this article", ""), metadata=tenant_a
    )
    assert response.embedder == "hash"
    assert response.dimension == 384
    assert len(response.embeddings) == 3
    for vector in response.embeddings:
        assert len(vector.values) == 384
        assert math.isclose(math.fsum(x * x for x in vector.values), 1.0, rel_tol=1e-5)
    again = await memory.EmbedTexts(_embed("summarize this article"), metadata=tenant_a)
    assert list(again.embeddings[0].values) == list(response.embeddings[1].values)


async def test_a_texts_vector_finds_the_memory_stored_with_that_text(
    memory: Stub, tenant_a: Metadata
) -> None:
    namespace = f"embed/{uid()}"
    content = "my trip to Lisbon is in May"
    await memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(
            memory=memory_pb2.Memory(namespace=namespace, content=content)
        ),
        metadata=tenant_a,
    )
    (vector,) = (await memory.EmbedTexts(_embed(content), metadata=tenant_a)).embeddings
    found = await memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(vector=vector, namespace_prefix=namespace),
        metadata=tenant_a,
    )
    assert [hit.memory.content for hit in found.results] == [content]
    assert found.results[0].score == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    ("texts", "field", "why"),
    [
        ((), "texts", "required"),
        (("x",) * 65, "texts", "at most 64"),
        (("ok", "y" * 4097), "texts[1]", "at most 4096"),
        (("ok", "a\x00b"), "texts[1]", "NUL"),
        (("z" * 4096,) * 17, "texts", "at most 65536"),
    ],
)
async def test_bad_texts_are_named(
    memory: Stub, tenant_a: Metadata, texts: tuple[str, ...], field: str, why: str
) -> None:
    violations = await field_violations(memory.EmbedTexts(_embed(*texts), metadata=tenant_a))
    assert why in violations[field]


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
        AGENTMESH_MEMORY_TENANT_CONCURRENCY="1",
        AGENTMESH_MEMORY_JANITOR_INTERVAL_S="0",
    )
    embedder = _GatedEmbedder()
    running = await start_server(config.settings, await build_memory(*config, embedder=embedder))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield cast("Stub", memory_pb2_grpc.MemoryServiceStub(channel)), embedder
    finally:
        await running.stop(0)


async def test_a_tenant_over_its_embedding_limit_is_refused_and_another_is_served(
    gated: tuple[Stub, _GatedEmbedder], tenant_a: Metadata, tenant_b: Metadata
) -> None:
    stub, embedder = gated
    held = asyncio.ensure_future(stub.EmbedTexts(_embed("a"), metadata=tenant_a))
    await embedder.wait_for_calls(1)
    error = await expect_error(
        stub.EmbedTexts(_embed("a again"), metadata=tenant_a), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert "in flight" in (error.details() or "")
    other = asyncio.ensure_future(stub.EmbedTexts(_embed("b"), metadata=tenant_b))
    await embedder.wait_for_calls(2)
    embedder.gate.set()
    for response in await asyncio.gather(held, other):
        assert response.embeddings[0].values[0] == 1.0
    assert (await stub.EmbedTexts(_embed("a, later"), metadata=tenant_a)).dimension == 384
