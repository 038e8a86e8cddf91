"""Embedders run off the event loop, at most ``embedder_concurrency`` calls at a time,
and the texts of concurrent calls go to the model together."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from agentmesh.memory.embedders import BatchingEmbedder, HashEmbedder

pytestmark = pytest.mark.unit


class _Slow:
    """An embedder that records its calls, how many overlap, and answers each text
    with a vector that names it (its number), so a caller can check it got its own."""

    def __init__(self, fail: bool = False) -> None:
        self.running = 0
        self.most = 0
        self.calls: list[int] = []
        self.fail = fail

    @property
    def dimension(self) -> int:
        return 2

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.running += 1
        self.most = max(self.most, self.running)
        self.calls.append(len(texts))
        await asyncio.sleep(0.01)
        self.running -= 1
        if self.fail:
            raise RuntimeError("model down")
        return [[float(text), 0.0] for text in texts]


async def _each(embedder: BatchingEmbedder, count: int) -> list[list[list[float]]]:
    return await asyncio.gather(*(embedder.embed([str(i), str(i + 1000)]) for i in range(count)))


@pytest.mark.parametrize("limit", [1, 2, 3])
async def test_at_most_limit_calls_run_at_once_and_each_caller_gets_its_vectors(
    limit: int,
) -> None:
    inner = _Slow()
    embedder = BatchingEmbedder(inner, limit)
    results = await _each(embedder, 10)
    assert results == [[[float(i), 0.0], [float(i + 1000), 0.0]] for i in range(10)]
    assert 1 <= inner.most <= limit
    await embedder.aclose()


async def test_calls_that_arrive_while_the_slots_are_busy_leave_together() -> None:
    inner = _Slow()
    embedder = BatchingEmbedder(inner, 1, max_texts=64)
    # Calls that arrive at once leave at once, together.
    await _each(embedder, 20)
    assert inner.calls == [40]
    # The first call leaves alone (the slot was free); the 19 after it gather behind it.
    first = asyncio.ensure_future(embedder.embed(["1"]))
    await asyncio.sleep(0.001)
    await _each(embedder, 19)
    await first
    assert inner.calls == [40, 1, 38]
    assert embedder.batches == 3
    await embedder.aclose()


async def test_a_batch_holds_at_most_max_texts_and_a_large_call_goes_alone() -> None:
    inner = _Slow()
    embedder = BatchingEmbedder(inner, 1, max_texts=6)
    await _each(embedder, 10)
    assert max(inner.calls) <= 6
    assert sum(inner.calls) == 20
    inner.calls.clear()
    large = await embedder.embed([str(i) for i in range(8)])
    assert [v[0] for v in large] == [float(i) for i in range(8)]
    assert inner.calls == [8]
    await embedder.aclose()


async def test_a_failed_model_call_fails_every_caller_of_its_batch_and_the_next_works() -> None:
    inner = _Slow(fail=True)
    embedder = BatchingEmbedder(inner, 1)
    outcomes = await asyncio.gather(
        *(embedder.embed([str(i)]) for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    inner.fail = False
    assert await embedder.embed(["7"]) == [[7.0, 0.0]]
    await embedder.aclose()


async def test_a_caller_that_gives_up_is_dropped_from_its_batch() -> None:
    inner = _Slow()
    embedder = BatchingEmbedder(inner, 1)
    first = asyncio.ensure_future(embedder.embed(["1"]))
    await asyncio.sleep(0)  # the first call takes the slot
    gone = asyncio.ensure_future(embedder.embed(["2"]))
    kept = asyncio.ensure_future(embedder.embed(["3"]))
    await asyncio.sleep(0)
    gone.cancel()
    assert await kept == [[3.0, 0.0]]
    assert await first == [[1.0, 0.0]]
    assert inner.calls == [1, 1]
    await embedder.aclose()


async def test_with_a_wait_calls_join_a_batch_even_while_a_slot_is_free() -> None:
    inner = _Slow()
    embedder = BatchingEmbedder(inner, 4, max_wait_s=0.05)

    async def later(i: int) -> list[list[float]]:
        await asyncio.sleep(0.01 * i)
        return await embedder.embed([str(i)])

    await asyncio.gather(*(later(i) for i in range(3)))
    assert inner.calls == [3]
    await embedder.aclose()


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
