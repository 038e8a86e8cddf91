"""The local all-MiniLM-L6-v2 embedder (the ``minilm`` extra, always in the dev env).

It runs the real model from the installed wheel, offline, in numpy. Its vectors
must be sentence-transformers' own: ``minilm_reference.json`` holds what
sentence-transformers (on PyTorch) gives for texts chosen to cover short and long
(truncated at 256 tokens) input, unicode, punctuation only and the empty string.
The missing-extra error is tested in tests/unit/memory/test_minilm_check_installed.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from agentmesh.memory.embedders import BatchingEmbedder, build_embedder, embed_checked
from agentmesh.memory.embedders.minilm import DIMENSION, MiniLMEmbedder
from agentmesh.memory.settings import MemorySettings

_REFERENCE = Path(__file__).with_name("minilm_reference.json")


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    settings = MemorySettings.from_env({"AGENTMESH_MEMORY_EMBEDDER": "minilm"})
    capped = build_embedder(settings, timeout_s=10.0)
    assert isinstance(capped, BatchingEmbedder)
    built = capped.inner
    assert isinstance(built, MiniLMEmbedder)
    return built


def _reference_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads(_REFERENCE.read_text(encoding="utf-8"))["cases"]
    return cases


async def test_minilm_reproduces_sentence_transformers(embedder: MiniLMEmbedder) -> None:
    cases = _reference_cases()
    texts = [case["text"] for case in cases]
    # The fixture must keep covering truncation: one text well past 256 tokens.
    assert max(len(text.split()) for text in texts) > 300
    assert "" in texts

    batch = await embed_checked(embedder, texts, DIMENSION)
    # One at a time too: per-batch padding must not change a text's vector.
    single = [(await embedder.embed([text]))[0] for text in texts]

    for case, together, alone in zip(cases, batch, single, strict=True):
        expected = case["embedding"]
        label = case["text"][:40]
        for got in (together, alone):
            assert _cosine(got, expected) >= 0.9999, label
            # The reference is rounded to 6 decimals (±5e-7).
            assert max(abs(x - y) for x, y in zip(got, expected, strict=True)) < 1e-5, label

    # More texts than one batch holds (64), lengths interleaved: every vector still
    # lands at its own text's position.
    short = [case for case in cases if len(case["text"]) < 500]
    many = short * 12
    vectors = await embedder.embed([case["text"] for case in many])
    assert len(vectors) == len(many) > 64
    for case, got in zip(many, vectors, strict=True):
        assert _cosine(got, case["embedding"]) >= 0.9999, case["text"][:40]


async def test_minilm_embeds_semantically(embedder: MiniLMEmbedder) -> None:
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
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, abs_tol=1e-5) for v in (seats, plane))
    # A real model relates texts that share no words; the hash embedder cannot.
    assert _cosine(seats, plane) > _cosine(seats, revenue) + 0.2
    assert await embedder.embed([]) == []
