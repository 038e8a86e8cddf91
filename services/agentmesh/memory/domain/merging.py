"""Near-duplicate merging of long-term memories: what a batch of writes becomes.

A write whose vector is within the merge similarity of a live memory in the same
tenant and namespace updates that memory instead of adding a copy; a write similar
to an earlier write of the same batch joins that write's target. The store finds the
stored candidates (pgvector computes those similarities); :func:`similar_earlier`
finds the pairs within a batch; the rules here decide, in request order, where each
write ends up and what a group of merged writes leaves behind.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np


@dataclass
class NewMemory:
    """A validated create request; ``embedding`` is filled in before the write."""

    namespace: str
    kind: int
    content: str
    metadata: dict[str, Any]
    embedding: list[float] | None
    session: str | None
    expire_time: datetime | None
    request_id: str


@dataclass
class MergeTarget:
    """Where a group of batch items ends up: an existing memory or a new row."""

    existing_id: str | None
    items: list[int] = field(default_factory=list)


def plan_merges(
    count: int,
    existing: dict[int, tuple[str, float]],
    earlier: dict[int, list[tuple[int, float]]],
) -> tuple[list[MergeTarget], list[int]]:
    """Decides, in request order, what each of ``count`` items becomes.

    ``existing[j]`` is item j's most similar live memory at or above the threshold
    (id, similarity); ``earlier[j]`` lists earlier items of the batch in the same
    namespace at or above it. An item merges into the target of its most similar
    predecessor, existing or earlier in the batch; otherwise it starts a new memory.
    Returns the targets and each item's target index.
    """
    targets: list[MergeTarget] = []
    target_of: list[int] = []
    by_existing: dict[str, int] = {}
    for j in range(count):
        best: tuple[float, int] | None = None  # (similarity, target index)
        if j in existing:
            memory_id, similarity = existing[j]
            if memory_id not in by_existing:
                by_existing[memory_id] = len(targets)
                targets.append(MergeTarget(memory_id))
            best = (similarity, by_existing[memory_id])
        for i, similarity in earlier.get(j, ()):
            if best is None or similarity > best[0]:
                best = (similarity, target_of[i])
        if best is None:
            targets.append(MergeTarget(None))
            best = (1.0, len(targets) - 1)
        targets[best[1]].items.append(j)
        target_of.append(best[1])
    # An existing memory whose item merged elsewhere keeps an empty target: skipped.
    return targets, target_of


def merged_fields(items: Sequence[NewMemory]) -> dict[str, Any]:
    """The values a group of merged writes leaves behind: the latest write wins for
    content, vector, session and expiry; metadata keys accumulate (as compact JSON)."""
    metadata: dict[str, Any] = {}
    for item in items:
        metadata.update(item.metadata)
    sessions = [item.session for item in items if item.session]
    last = items[-1]
    return {
        "content": last.content,
        "embedding": last.embedding,
        "metadata": json.dumps(metadata, separators=(",", ":"), sort_keys=True),
        "session": sessions[-1] if sessions else None,
        "expire_time": last.expire_time,
    }


def similar_earlier(
    vectors: Sequence[Sequence[float]], namespaces: Sequence[str], threshold: float
) -> dict[int, list[tuple[int, float]]]:
    """For each item, the earlier items of its namespace whose cosine similarity to it
    is at least ``threshold``: the ``earlier`` argument of :func:`plan_merges`.

    One matrix product per namespace (1,000 items of 384 dimensions: a few
    milliseconds); CPU work, so a caller on the event loop runs it in a thread. A zero
    vector is similar to nothing (its cosine is undefined).
    """
    groups: dict[str, list[int]] = {}
    for j, namespace in enumerate(namespaces):
        groups.setdefault(namespace, []).append(j)
    pairs: dict[int, list[tuple[int, float]]] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        matrix = np.asarray([vectors[j] for j in members], dtype=np.float64)
        norms = np.linalg.norm(matrix, axis=1)
        norms[norms == 0] = np.inf
        unit = matrix / norms[:, None]
        similarity = unit @ unit.T
        earlier_index, later_index = np.nonzero(np.triu(similarity >= threshold, k=1))
        for a, b in zip(earlier_index.tolist(), later_index.tolist(), strict=True):
            later, earlier = members[b], members[a]
            pairs.setdefault(later, []).append((earlier, float(similarity[a, b])))
    return pairs
