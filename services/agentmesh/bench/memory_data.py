"""Data for the `memory` bench: structured synthetic vectors and realistic short texts.

Vectors: i.i.d. random 384-d vectors are the wrong test for an approximate index (in 384
dimensions every point is nearly equidistant from every other, so the "true" top 10 are
barely closer than the rest and every HNSW shows near-zero recall). Real embeddings lie
near a low-dimensional manifold; `LowRankVectors` models that: x = normalize(A·z + ε)
with z ~ N(0, I₃₂), A a fixed random 384×32 matrix and ε small isotropic noise.

Texts: sentences assembled from word lists (who, did what, to what, when, why), distinct
enough that the hash embedder does not see two of them as near-duplicates.
"""

from __future__ import annotations

import array
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from operator import mul
from typing import Final, TypeAlias

DIMENSION: Final = 384
INTRINSIC_DIMENSION: Final = 32
NOISE_RATIO: Final = 0.1
"""Noise standard deviation per component, relative to the signal's (power ratio 1 %)."""

Vec: TypeAlias = "array.array[float]"
"""Typecode "f": float32, as pgvector stores them and the proto sends them."""


@dataclass(frozen=True)
class LowRankVectors:
    """Unit vectors near a random 32-dimensional subspace of R^384 (fixed by `seed`).

    Pure Python (the bench must not need numpy): ~0.4 ms per vector, so 100k take
    ~40-60 s; callers stream them in chunks into COPY, which overlaps the two.
    """

    seed: int = 20261124
    dimension: int = DIMENSION
    intrinsic: int = INTRINSIC_DIMENSION
    noise_ratio: float = NOISE_RATIO

    def basis(self) -> list[list[float]]:
        """A: `dimension` rows of `intrinsic` i.i.d. N(0, 1) entries."""
        rng = random.Random(self.seed)
        return [[rng.gauss(0.0, 1.0) for _ in range(self.intrinsic)] for _ in range(self.dimension)]

    def stream(self, count: int, stream: int) -> Iterator[Vec]:
        """`count` vectors, L2-normalised, rounded to float32; `stream` picks an
        independent draw (data and queries use different streams)."""
        rows = self.basis()
        rng = random.Random(f"{self.seed}/{stream}")
        gauss = rng.gauss
        # (A·z)_d has variance `intrinsic`; the noise's standard deviation is a
        # `noise_ratio` of the signal's.
        noise_std = self.noise_ratio * math.sqrt(self.intrinsic)
        for _ in range(count):
            z = [gauss(0.0, 1.0) for _ in range(self.intrinsic)]
            x = [sum(map(mul, row, z)) + gauss(0.0, noise_std) for row in rows]
            norm = math.sqrt(sum(map(mul, x, x)))
            yield array.array("f", [v / norm for v in x])

    def sample(self, count: int, stream: int) -> list[Vec]:
        return list(self.stream(count, stream))


def chunks(vectors: Iterator[Vec], size: int) -> Iterator[list[Vec]]:
    while chunk := list(islice(vectors, size)):
        yield chunk


def dot(a: Sequence[float], b: Sequence[float]) -> float:
    return math.fsum(map(mul, a, b))


def exact_top_k(data: Sequence[Vec], query: Sequence[float], k: int) -> list[int]:
    """Indices of the k rows of `data` with the largest dot product with `query` (=
    cosine: rows are unit vectors), best first: an exact scan in pure Python (slow:
    used to cross-check PostgreSQL's exact scan on a few queries)."""
    scores = [sum(map(mul, row, query)) for row in data]
    return sorted(range(len(scores)), key=lambda i: -scores[i])[:k]


# ------------------------------------------------------------------ texts

_WHO: Final = (
    "Alice",
    "Bruno",
    "Chen",
    "Dalia",
    "Emeka",
    "Farah",
    "Gustav",
    "Hana",
    "Ivan",
    "Jorge",
    "Keiko",
    "Lars",
    "Maya",
    "Nikos",
    "Olga",
    "Priya",
    "Quentin",
    "Rosa",
    "Sami",
    "Tomas",
    "Uma",
    "Viktor",
    "Wen",
    "Ximena",
    "Yusuf",
    "Zoe",
    "the customer",
    "the new hire",
    "our landlord",
    "the support lead",
    "my sister",
    "the project manager",
)
_DID: Final = (
    "prefers",
    "booked",
    "cancelled",
    "asked about",
    "complained about",
    "recommended",
    "forgot",
    "paid for",
    "returned",
    "ordered",
    "reviewed",
    "shared",
    "postponed",
    "renewed",
    "upgraded",
    "rescheduled",
    "approved",
    "rejected",
    "borrowed",
    "repaired",
    "lost",
    "found",
    "scheduled",
    "signed up for",
)
_WHAT: Final = (
    "an aisle seat",
    "a vegetarian meal",
    "the Lisbon trip",
    "a standing desk",
    "the quarterly report",
    "two concert tickets",
    "a dentist appointment",
    "the gym membership",
    "a rental car",
    "the insurance claim",
    "a hotel near the station",
    "the team offsite",
    "a birthday cake",
    "the broken laptop",
    "a French course",
    "the cloud invoice",
    "a window table",
    "the spare keys",
    "a parking permit",
    "the onboarding checklist",
    "a train pass",
    "the wedding gift",
    "a printer cartridge",
    "the sprint demo",
    "a yoga class",
    "the tax return",
    "a bike repair",
    "the server upgrade",
    "a phone contract",
    "the museum tour",
    "a weekly grocery order",
    "the legal review",
)
_WHEN: Final = (
    "on Monday",
    "last Tuesday",
    "this morning",
    "before the holidays",
    "in early March",
    "after lunch",
    "on the third of May",
    "next weekend",
    "during the storm",
    "at the end of the quarter",
    "yesterday evening",
    "two weeks ago",
    "on Friday night",
    "in late autumn",
    "right after the meeting",
    "over the summer",
)
_WHY: Final = (
    "because of the price",
    "to save time",
    "for the kids",
    "after a bad experience",
    "on a friend's advice",
    "since the old one broke",
    "to meet a deadline",
    "for health reasons",
    "because the office moved",
    "to avoid the crowds",
    "as a surprise",
    "for the visa application",
    "due to a scheduling conflict",
    "to get a discount",
    "because it rained",
    "for better reception",
    "while travelling abroad",
    "to impress the client",
)
_WHERE: Final = (
    "in Berlin",
    "at the airport",
    "near the office",
    "in Osaka",
    "at home",
    "in the old town",
    "at the downtown branch",
    "in Lagos",
    "by the lake",
    "in Montreal",
    "at the clinic",
    "in Porto",
    "at the warehouse",
    "in Nairobi",
    "on the second floor",
    "in Valparaiso",
    "at the station",
    "in Krakow",
    "online",
    "at the front desk",
)
_EXTRA: Final = (
    "",
    "and wants a reminder",
    "and paid by card",
    "and mentioned it twice",
    "and asked for a receipt",
    "and was happy with it",
    "and may change it again",
    "and told the whole team",
    "and wants it in writing",
    "but only on weekdays",
)


def sentences(count: int, seed: int = 7) -> list[str]:
    """`count` distinct short sentences (~15-25 words), reproducible from `seed`."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    pools = (_WHO, _DID, _WHAT, _WHERE, _WHEN, _WHY, _EXTRA)
    bound = count * 20 + 100  # the space holds ~10^12: duplicates are rare
    for _ in range(bound):
        if len(out) == count:
            break
        who, did, what, where, when, why, extra = (rng.choice(p) for p in pools)
        amount = f"for {rng.randrange(5, 2000)} euros"
        text = f"{who} {did} {what} {where} {when} {amount} {why}{' ' + extra if extra else ''}."
        text = text[0].upper() + text[1:]
        if text not in seen:
            seen.add(text)
            out.append(text)
    if len(out) < count:  # pragma: no cover - the space is far larger than any run
        raise ValueError(f"could only make {len(out)} distinct sentences")
    return out
