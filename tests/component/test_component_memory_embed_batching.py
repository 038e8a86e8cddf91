"""Embeddings batched across requests, over real gRPC with PostgreSQL: concurrent
creates and searches of two tenants share model calls (far fewer calls than texts),
and each request still gets its own vector: every memory is found first by its own
text, in its own tenant."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc

from agentmesh.core.server import start_server
from agentmesh.memory.app import build_memory
from agentmesh.memory.embedders import BatchingEmbedder, HashEmbedder
from agentmesh.v1 import memory_pb2, memory_pb2_grpc
from component.conftest import Backends, credentials, memory_settings
from component.memory_helpers import Stub, uid

DIM = 384
WRITES = 24


class _SlowHash:
    """The hash embedder with a model's latency, counting its calls and texts."""

    def __init__(self) -> None:
        self._hash = HashEmbedder(DIM)
        self.calls = 0
        self.texts = 0

    @property
    def dimension(self) -> int:
        return DIM

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        self.texts += len(texts)
        await asyncio.sleep(0.05)
        return await self._hash.embed(texts)


async def test_concurrent_writes_and_searches_share_model_calls_and_keep_their_vectors(
    backends: Backends,
) -> None:
    inner = _SlowHash()
    embedder = BatchingEmbedder(inner, 1, max_texts=64)
    config = memory_settings(backends)
    running = await start_server(config.settings, await build_memory(*config, embedder=embedder))
    tenants = [credentials(f"batch-{uid()}"), credentials(f"batch-{uid()}")]
    namespace = f"batch/{uid()}"
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub: Stub = memory_pb2_grpc.MemoryServiceStub(channel)  # type: ignore[assignment]

            def content(i: int) -> str:
                return f"note {i}: the {['red', 'green', 'blue'][i % 3]} kite number {i * 7919}"

            created = await asyncio.gather(
                *(
                    stub.CreateMemory(
                        memory_pb2.CreateMemoryRequest(
                            memory=memory_pb2.Memory(namespace=namespace, content=content(i))
                        ),
                        metadata=tenants[i % 2],
                        timeout=60,
                    )
                    for i in range(WRITES)
                )
            )
            writes_calls = inner.calls
            assert inner.texts == WRITES
            assert writes_calls < WRITES / 2  # batched: a handful of model calls

            found = await asyncio.gather(
                *(
                    stub.SearchMemories(
                        memory_pb2.SearchMemoriesRequest(
                            text=content(i), namespace_prefix=namespace, top_k=1
                        ),
                        metadata=tenants[i % 2],
                        timeout=60,
                    )
                    for i in range(WRITES)
                )
            )
            assert inner.calls - writes_calls < WRITES / 2
            for i, (memory, hits) in enumerate(zip(created, found, strict=True)):
                assert memory.content == content(i)
                (best,) = hits.results
                assert best.memory.name == memory.name  # its own vector, its own tenant
    finally:
        await running.stop(0)
        await embedder.aclose()
