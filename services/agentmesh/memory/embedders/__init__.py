"""Embedders: text in, unit vectors out, behind one small interface.

``hash`` is deterministic and needs no model (development and tests); the real
ones (a local model, an OpenAI-compatible endpoint) implement the same protocol.
Vectors are L2-normalised so cosine similarity is a dot product.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from agentmesh.core.settings import ConfigError, Settings
from agentmesh.memory.embedders.hashing import HashEmbedder


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


def build_embedder(settings: Settings) -> Embedder:
    """The embedder named by ``memory_embedder``, checked against ``memory_embedding_dim``."""
    if settings.memory_embedder == "hash":
        return HashEmbedder(settings.memory_embedding_dim)
    raise ConfigError(
        f"AGENTMESH_MEMORY_EMBEDDER={settings.memory_embedder!r} is not available in this build"
    )


__all__ = ["Embedder", "HashEmbedder", "build_embedder"]
