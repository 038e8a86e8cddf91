"""A deterministic embedder with no model: signed feature hashing of words and
character trigrams.

Texts that share words and spellings get close vectors, so near-duplicate merging
and search behave sensibly in development and tests, offline and reproducibly.
It is not a semantic model: synonyms are strangers to it.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence

_WORD = re.compile(r"\w+", re.UNICODE)


class HashEmbedder:
    """Feature hashing into ``dimension`` buckets, L2-normalised."""

    def __init__(self, dimension: int) -> None:
        if dimension < 1:
            raise ValueError("dimension must be positive")
        self._dimension = dimension

    @property
    def dimension(self) -> int:
        return self._dimension

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [self.embed_one(text) for text in texts]

    def embed_one(self, text: str) -> list[float]:
        """The vector of one text (synchronous: pure CPU, microseconds per word)."""
        vector = [0.0] * self._dimension
        words = _WORD.findall(text.lower())
        for word in words:
            self._add(vector, "w:" + word, 1.0)
            padded = f"#{word}#"
            for i in range(len(padded) - 2):
                self._add(vector, "t:" + padded[i : i + 3], 0.5)
        norm = math.sqrt(sum(x * x for x in vector))
        if norm == 0.0:
            # No word characters at all: a fixed unit vector, so the result is still a
            # valid cosine operand and identical texts still match.
            vector[0] = 1.0
            return vector
        return [x / norm for x in vector]

    def _add(self, vector: list[float], feature: str, weight: float) -> None:
        digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
        bucket = int.from_bytes(digest[:4], "little") % self._dimension
        sign = 1.0 if digest[4] & 1 else -1.0
        vector[bucket] += sign * weight
