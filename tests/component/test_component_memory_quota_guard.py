"""The per-replica usage cache behind storage quotas, against real PostgreSQL: what a
replica admits counts at once; a stale usage is answered from the cache and measured
again in the background; a measurement sees what other replicas stored."""

from __future__ import annotations

import asyncio

import asyncpg  # type: ignore[import-untyped]
import pytest

from agentmesh.memory.domain.quotas import KINDS, Quota, QuotaExceededError
from agentmesh.memory.quota_guard import TenantQuotas
from component.memory_helpers import uid

UNLIMITED = {kind: Quota(0, 0) for kind in KINDS}


async def _store_sessions(db: asyncpg.Pool, tenant: str, count: int) -> None:
    """Sessions written behind the guard's back, as another replica would."""
    for _ in range(count):
        await db.execute(
            "INSERT INTO memory.sessions (tenant, id) VALUES ($1, $2)", tenant, f"q{uid()}"
        )


async def test_admitted_writes_count_before_the_next_measurement(db: asyncpg.Pool) -> None:
    guard = TenantQuotas(db, {**UNLIMITED, "sessions": Quota(2, 0)}, refresh_s=3600)
    tenant = f"guard-{uid()}"
    await guard.admit(tenant, "sessions", rows=1, size=0)
    await guard.admit(tenant, "sessions", rows=1, size=0)
    with pytest.raises(QuotaExceededError):
        await guard.admit(tenant, "sessions", rows=1, size=0)
    # Another tenant is measured on its own.
    await guard.admit(f"guard-{uid()}", "sessions", rows=2, size=0)


async def test_a_stale_usage_answers_at_once_and_is_measured_again(db: asyncpg.Pool) -> None:
    guard = TenantQuotas(db, {**UNLIMITED, "sessions": Quota(3, 0)}, refresh_s=0.05)
    tenant = f"guard-{uid()}"
    await guard.admit(tenant, "sessions", rows=1, size=0)  # measured: 0, then 1 admitted
    await _store_sessions(db, tenant, 3)  # another replica stored three
    await asyncio.sleep(0.1)  # the cached usage is stale now
    # Answered from the cache (1 + 1 <= 3) while a measurement runs in the background.
    await guard.admit(tenant, "sessions", rows=1, size=0)
    await guard.settle()
    with pytest.raises(QuotaExceededError):  # the measurement found 3 stored
        await guard.admit(tenant, "sessions", rows=1, size=0)
