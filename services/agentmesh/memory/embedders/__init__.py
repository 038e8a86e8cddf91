"""Embedders: text in, unit vectors out, behind one small interface.

``hash`` is deterministic and needs no model (development and tests); ``minilm``
runs all-MiniLM-L6-v2 locally (the optional ``minilm`` extra); ``openai`` calls
an OpenAI-compatible ``/embeddings`` endpoint. Vectors are L2-normalised so
cosine similarity is a dot product.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from agentmesh.core.settings import ConfigError, require_settings
from agentmesh.core.tasks import stop_task
from agentmesh.memory.embedders import minilm
from agentmesh.memory.embedders.errors import EmbedderMisbehaved, EmbedderUnavailable
from agentmesh.memory.embedders.hashing import HashEmbedder
from agentmesh.memory.embedders.openai_compat import OpenAIEmbedder
from agentmesh.memory.settings import PREFIX, MemorySettings


class Embedder(Protocol):
    """Turns texts into vectors of ``dimension`` floats, one per text, in order."""

    @property
    def dimension(self) -> int:
        """Length of every vector."""
        ...

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embeds a batch. Raises ``ResourceExhausted`` (provider quota, with retry
        advice) or ``EmbedderUnavailable`` when a remote provider cannot answer."""
        ...


@dataclass
class _Waiting:
    """One call's texts and the future its vectors go to."""

    texts: list[str]
    future: asyncio.Future[list[list[float]]]


class _Queue:
    """The waiting calls and the slots of one event loop."""

    def __init__(self, limit: int) -> None:
        self.slots = asyncio.Semaphore(limit)
        self.waiting: deque[_Waiting] = deque()
        self.texts = 0
        self.arrived = asyncio.Event()
        self.full = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.dispatcher: asyncio.Task[None] | None = None
        self.calls: set[asyncio.Task[None]] = set()


class BatchingEmbedder:
    """``inner`` behind a queue: the texts of concurrent calls go to it together, one
    call of at most ``max_texts``, and at most ``limit`` calls run at once.

    While a slot is free a call leaves at once, or after waiting at most
    ``max_wait_s`` for others to join it; while every slot is busy, the calls that
    arrive gather and leave together when one frees. So at low load nothing waits, and
    under load batches grow with it: one model call of 16 texts costs a CPU model
    (MiniLM) far less than 16 calls of one, so writes scale with concurrency instead of
    queueing. The cap keeps one tenant's burst from taking every core (or a provider's
    whole quota). Every embedder runs off the event loop (the local ones in threads,
    the remote one in its HTTP client). A call of ``max_texts`` or more goes alone.
    """

    def __init__(
        self, inner: Embedder, limit: int, *, max_texts: int = 64, max_wait_s: float = 0.0
    ) -> None:
        self._inner = inner
        self._limit = limit
        self._max_texts = max_texts
        self._max_wait_s = max_wait_s
        self._queue: _Queue | None = None
        self.batches = 0
        """Model calls made (a measure of the batching: fewer than the calls served)."""

    @property
    def inner(self) -> Embedder:
        """The embedder this one batches."""
        return self._inner

    @property
    def dimension(self) -> int:
        return self._inner.dimension

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        queue = self._current()
        if len(texts) >= self._max_texts:
            async with queue.slots:
                self.batches += 1
                return await self._inner.embed(texts)
        waiting = _Waiting(list(texts), queue.loop.create_future())
        queue.waiting.append(waiting)
        queue.texts += len(waiting.texts)
        queue.arrived.set()
        if queue.texts >= self._max_texts:
            queue.full.set()
        return await waiting.future

    def _current(self) -> _Queue:
        """The queue of the running loop (a new one when the loop changed: tests)."""
        queue = self._queue
        if queue is None or queue.loop is not asyncio.get_running_loop():
            queue = self._queue = _Queue(self._limit)
        if queue.dispatcher is None or queue.dispatcher.done():
            queue.dispatcher = asyncio.create_task(self._dispatch(queue), name="embed-batches")
        return queue

    async def _dispatch(self, queue: _Queue) -> None:
        """Takes a slot, then the calls waiting (up to ``max_texts``), and sends them."""
        while True:
            if not queue.waiting:
                queue.arrived.clear()
                await queue.arrived.wait()
                continue
            await queue.slots.acquire()
            try:
                if self._max_wait_s > 0 and queue.texts < self._max_texts:
                    queue.full.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._max_wait_s):
                            await queue.full.wait()
                batch = self._take(queue)
            except BaseException:
                queue.slots.release()
                raise
            if not batch:
                queue.slots.release()
                continue
            call = asyncio.create_task(self._send(queue, batch), name="embed-batch")
            queue.calls.add(call)
            call.add_done_callback(queue.calls.discard)

    def _take(self, queue: _Queue) -> list[_Waiting]:
        """The calls that leave together, in arrival order (a caller that gave up is
        dropped)."""
        batch: list[_Waiting] = []
        size = 0
        while queue.waiting:
            head = queue.waiting[0]
            if batch and size + len(head.texts) > self._max_texts:
                break
            queue.waiting.popleft()
            queue.texts -= len(head.texts)
            if head.future.done():
                continue
            batch.append(head)
            size += len(head.texts)
        return batch

    async def _send(self, queue: _Queue, batch: list[_Waiting]) -> None:
        try:
            texts = [text for waiting in batch for text in waiting.texts]
            self.batches += 1
            vectors = await self._inner.embed(texts)
        except BaseException as exc:
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            queue.slots.release()
        start = 0
        for waiting in batch:
            # embed_checked checks each call's count and sizes: a misbehaving model
            # answers every caller with its own short (or long) slice.
            end = start + len(waiting.texts) if len(vectors) == len(texts) else len(vectors)
            if not waiting.future.done():
                waiting.future.set_result(vectors[start:end])
            start = end

    async def aclose(self) -> None:
        """Stops the dispatcher and closes what the inner embedder holds (a remote
        one's HTTP pool)."""
        queue, self._queue = self._queue, None
        if queue is not None and queue.loop is asyncio.get_running_loop():
            await stop_task(queue.dispatcher, what="embedding batches")
        close = getattr(self._inner, "aclose", None)
        if close is not None:
            await close()


def build_embedder(settings: MemorySettings, *, timeout_s: float) -> BatchingEmbedder:
    """The configured embedder (:func:`_named_embedder`), its concurrent calls batched
    and at most ``embedder_concurrency`` at a time (:class:`BatchingEmbedder`)."""
    return BatchingEmbedder(
        _named_embedder(settings, timeout_s=timeout_s),
        settings.embedder_concurrency,
        max_texts=settings.embed_batch_max_texts,
        max_wait_s=settings.embed_batch_wait_ms / 1000,
    )


def _named_embedder(settings: MemorySettings, *, timeout_s: float) -> Embedder:
    """The embedder named by ``memory_embedder``, checked against ``memory_embedding_dim``.

    Raises ConfigError at start for a missing extra, a missing URL or a dimension
    the embedder cannot produce, so a misconfigured process never serves.
    """
    dim = settings.embedding_dim
    if settings.embedder == "hash":
        return HashEmbedder(dim)
    if settings.embedder == "minilm":
        if dim != minilm.DIMENSION:
            raise ConfigError(
                f"AGENTMESH_MEMORY_EMBEDDER=minilm produces {minilm.DIMENSION}-dim vectors, "
                f"but AGENTMESH_MEMORY_EMBEDDING_DIM={dim}"
            )
        return minilm.MiniLMEmbedder()
    if settings.embedder == "openai":
        require_settings(settings, "memory", PREFIX, "embedder_url")
        assert settings.embedder_url is not None  # checked just above
        # The provider's size is only known from its answers: we ask for `dim`
        # and embed_checked() verifies every vector it sends.
        return OpenAIEmbedder(
            settings.embedder_url,
            model=settings.embedder_model,
            api_key=settings.embedder_api_key,
            dimension=dim,
            timeout_s=timeout_s,
        )
    raise ConfigError(
        f"AGENTMESH_MEMORY_EMBEDDER={settings.embedder!r} is not available in this build"
    )


async def embed_checked(
    embedder: Embedder, texts: Sequence[str], dimension: int
) -> list[list[float]]:
    """``embedder.embed(texts)``, verified: one finite vector of ``dimension`` per text.

    A provider that breaks this is misconfigured (INTERNAL, naming the numbers),
    never a client error and never a database error further down.
    """
    if not texts:
        return []
    vectors = await embedder.embed(texts)
    if len(vectors) != len(texts):
        raise EmbedderMisbehaved(f"embedder returned {len(vectors)} vectors for {len(texts)} texts")
    for vector in vectors:
        if len(vector) != dimension:
            raise EmbedderMisbehaved(
                f"embedder returned {len(vector)}-dim vectors but the store holds {dimension} "
                "(check AGENTMESH_MEMORY_EMBEDDER_MODEL and AGENTMESH_MEMORY_EMBEDDING_DIM)"
            )
        if not all(math.isfinite(x) for x in vector):
            raise EmbedderMisbehaved("embedder returned a vector with NaN or infinite values")
    return vectors


__all__ = [
    "BatchingEmbedder",
    "Embedder",
    "EmbedderMisbehaved",
    "EmbedderUnavailable",
    "HashEmbedder",
    "OpenAIEmbedder",
    "build_embedder",
    "embed_checked",
]
