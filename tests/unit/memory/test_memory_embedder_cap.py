"""Embedders run off the event loop and at most ``embedder_concurrency`` at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from agentmesh.memory.embedders import CappedEmbedder, HashEmbedder

pytestmark = pytest.mark.unit


class _Slow:
    """An embedder that records how many of its calls overlap."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0

    @property
    def dimension(self) -> int:
        return 2

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.running += 1
        self.most = max(self.most, self.running)
        await asyncio.sleep(0.01)
        self.running -= 1
        return [[1.0, 0.0] for _ in texts]


@pytest.mark.parametrize("limit", [1, 2, 3])
async def test_at_most_limit_calls_run_at_once(limit: int) -> None:
    inner = _Slow()
    capped = CappedEmbedder(inner, limit)
    results = await asyncio.gather(*(capped.embed(["x"]) for _ in range(10)))
    assert len(results) == 10
    assert inner.most == limit


async def test_the_hash_embedder_leaves_the_event_loop_free() -> None:
    embedder = HashEmbedder(384)
    texts = [f"text {i} " + "many different words here " * 400 for i in range(200)]
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            await asyncio.sleep(0)
            ticks += 1

    task = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    before = ticks
    vectors = await embedder.embed(texts)
    during = ticks - before
    done = True
    await task
    assert len(vectors) == 200
    # On the loop, the embedding would have run between two ticks: none in between.
    assert during > 1
