"""The deterministic hash embedder: its vectors are stored, so they must never drift.

A memory embedded today is compared with a query embedded next year; a change to the
hashing (or to the order of the float additions) would silently break every stored
near-duplicate and search. These digests were computed by the first implementation
and still hold after the per-word feature cache.
"""

from __future__ import annotations

import hashlib
import math
import struct

import pytest

from agentmesh.memory.embedders import hashing
from agentmesh.memory.embedders.hashing import HashEmbedder

PINNED = {
    "The user prefers aisle seats.": (
        "45821509f78376911bcdbbf5409d7dbebc0bf7209983dfb37dedf46a17775041"
    ),
    "Ünïcödé wörds ß": "c0808fd10531e1515512c5d88bc33cb1c51712db0a8e12de52a97ed2dc57c6ba",
    "": "fda4fa662d2e1273ff8cb18f3feca8da7ce9740d351fc7b97d06fdd7f5be45ba",
}


def _digest(vector: list[float]) -> str:
    return hashlib.sha256(struct.pack(f"<{len(vector)}d", *vector)).hexdigest()


@pytest.mark.parametrize("text", sorted(PINNED))
def test_vectors_are_bit_identical_to_the_pinned_ones(text: str) -> None:
    embedder = HashEmbedder(384)
    first = embedder.embed_one(text)
    assert _digest(first) == PINNED[text]
    assert _digest(embedder.embed_one(text)) == PINNED[text]  # from the cache, too


def test_vectors_are_unit_length_and_relate_shared_words() -> None:
    embedder = HashEmbedder(384)
    seats, aisle, revenue = (
        embedder.embed_one(t)
        for t in ("The user prefers aisle seats.", "aisle seats please", "Revenue grew.")
    )
    assert all(math.isclose(math.hypot(*v), 1.0) for v in (seats, aisle, revenue))

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cosine(seats, aisle) > cosine(seats, revenue) + 0.3


def test_the_word_cache_is_bounded_and_never_changes_a_vector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hashing, "_MAX_CACHED_WORDS", 3)
    bounded, fresh = HashEmbedder(384), HashEmbedder(384)
    text = "one two three four five six seven"
    for _ in range(3):
        assert bounded.embed_one(text) == fresh.embed_one(text)
        assert len(bounded._features) <= 3
