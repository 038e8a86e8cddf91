"""Embedders: text in, unit vectors out, behind one small interface.

``hash`` is deterministic and needs no model (development and tests); ``minilm``
runs all-MiniLM-L6-v2 locally (the optional ``minilm`` extra); ``openai`` calls
an OpenAI-compatible ``/embeddings`` endpoint. Vectors are L2-normalised so
cosine similarity is a dot product.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Protocol

from agentmesh.core.settings import ConfigError, require_settings
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


class CappedEmbedder:
    """``inner``, running at most ``limit`` calls at a time; the others wait their turn.

    Every embedder runs off the event loop (the local ones in threads, the remote one
    in its HTTP client), but unbounded concurrency would still let one tenant's burst of
    writes take every core (or a provider's whole quota); the cap keeps room for the
    rest of the service.
    """

    def __init__(self, inner: Embedder, limit: int) -> None:
        self._inner = inner
        self._slots = asyncio.Semaphore(limit)

    @property
    def inner(self) -> Embedder:
        """The embedder this one caps."""
        return self._inner

    @property
    def dimension(self) -> int:
        return self._inner.dimension

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        async with self._slots:
            return await self._inner.embed(texts)

    async def aclose(self) -> None:
        """Closes what the inner embedder holds (a remote one's HTTP pool)."""
        close = getattr(self._inner, "aclose", None)
        if close is not None:
            await close()


def build_embedder(settings: MemorySettings, *, timeout_s: float) -> Embedder:
    """The configured embedder (:func:`_named_embedder`), at most
    ``embedder_concurrency`` calls at a time (:class:`CappedEmbedder`)."""
    return CappedEmbedder(
        _named_embedder(settings, timeout_s=timeout_s), settings.embedder_concurrency
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
    "CappedEmbedder",
    "Embedder",
    "EmbedderMisbehaved",
    "EmbedderUnavailable",
    "HashEmbedder",
    "OpenAIEmbedder",
    "build_embedder",
    "embed_checked",
]
