"""Near-duplicates within one call, found by a matrix product per namespace."""

from __future__ import annotations

import math
import random

from agentmesh.memory.domain.merging import plan_merges, similar_earlier

DIM = 384


def random_unit(rng: random.Random) -> list[float]:
    vector = [rng.gauss(0.0, 1.0) for _ in range(DIM)]
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector]


def nudged(vector: list[float], rng: random.Random, by: float = 0.01) -> list[float]:
    return [v + rng.gauss(0.0, by / math.sqrt(DIM)) for v in vector]


def test_in_call_near_duplicates_are_found_per_namespace() -> None:
    rng = random.Random(10)
    a, b = random_unit(rng), random_unit(rng)
    vectors = [a, b, nudged(a, rng), a, [0.0] * DIM, [0.0] * DIM]
    namespaces = ["n", "n", "n", "m", "n", "n"]
    earlier = similar_earlier(vectors, namespaces, 0.95)
    assert set(earlier) == {2}
    ((first, similarity),) = earlier[2]
    assert first == 0
    assert 0.95 <= similarity <= 1.0
    targets, target_of = plan_merges(len(vectors), {}, earlier)
    assert target_of[2] == target_of[0]
    assert len(targets) == 5


def test_a_later_item_joins_its_most_similar_earlier_item() -> None:
    rng = random.Random(11)
    a = random_unit(rng)
    vectors = [a, nudged(a, rng, 0.2), nudged(a, rng, 0.001)]
    earlier = similar_earlier(vectors, ["n"] * 3, 0.95)
    assert [e for e, _ in earlier[2]] == [0, 1]
    _, target_of = plan_merges(3, {}, earlier)
    assert target_of == [0, 0, 0]


def test_nothing_similar_enough_means_no_pairs() -> None:
    rng = random.Random(12)
    vectors = [random_unit(rng) for _ in range(50)]
    assert similar_earlier(vectors, ["n"] * 50, 0.95) == {}
    assert similar_earlier([], [], 0.95) == {}
