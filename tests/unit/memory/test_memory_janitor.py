"""The Memory janitor, the parts that need no database: batching, metrics, the lock key."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from agentmesh.memory import janitor

pytestmark = pytest.mark.unit


async def test_drain_runs_batches_until_one_comes_back_short() -> None:
    sizes = iter([3, 3, 1, 99])
    limits: list[int] = []

    async def batch(limit: int) -> int:
        limits.append(limit)
        return next(sizes)

    before = REGISTRY.get_sample_value(
        "agentmesh_memory_janitor_purged_total", {"kind": "memories"}
    )
    assert await janitor._drain("memories", batch, 3) == 7
    assert limits == [3, 3, 3]  # stopped after the short batch
    after = REGISTRY.get_sample_value("agentmesh_memory_janitor_purged_total", {"kind": "memories"})
    assert before is not None  # every kind's series exists from the start
    assert after == before + 7


def test_the_lock_key_is_one_positive_bigint() -> None:
    assert 0 < janitor.LOCK_KEY < 2**63
