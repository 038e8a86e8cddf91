"""Storage quotas enforced at write time, cheaply: a per-replica cache of each tenant's
usage, measured again every ``quota_refresh_s``.

A write asks :meth:`TenantQuotas.admit` with what it adds. The tenant's usage of that
kind comes from the cache (measured through ``stores.usage`` when missing or older than
the refresh interval: a stale usage is answered from the cache while it is measured
again in the background, one measurement at a time per tenant and kind) plus what
this replica admitted since; the rule is ``domain.quotas.admit``. Counting rows on every
write would put a scan of the tenant's data on the hot path; instead the quota is
exact at each measurement and may be overshot between two by what the replicas admit
in one interval (documented as a soft limit). Kinds without limits cost nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Final

import asyncpg  # type: ignore[import-untyped]
import structlog

from agentmesh.memory.domain.quotas import Quota, Usage, admit
from agentmesh.memory.stores.usage import measure

MAX_CACHED: Final = 10_000
"""Most (tenant, kind) usages one replica keeps; the least recently used go first."""


class TenantQuotas:
    """The usage cache and admission of one replica."""

    def __init__(
        self, pool: asyncpg.Pool, quotas: Mapping[str, Quota], *, refresh_s: float
    ) -> None:
        self._pool = pool
        self._quotas = dict(quotas)
        self._refresh_s = refresh_s
        self._usage: OrderedDict[tuple[str, str], tuple[Usage, float]] = OrderedDict()
        self._measuring: dict[tuple[str, str], asyncio.Lock] = {}
        self._refreshing: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[Usage]] = set()

    async def admit(self, tenant: str, kind: str, *, rows: int, size: int) -> None:
        """Admits a write of ``rows`` rows and ``size`` bytes of ``kind`` by ``tenant``,
        counting it; raises ``QuotaExceededError`` (RESOURCE_EXHAUSTED) otherwise."""
        quota = self._quotas[kind]
        if quota.unlimited:
            return
        key = (tenant, kind)
        usage = await self._current(key)
        admit(kind, usage, quota, rows=rows, size=size)
        # Counted at once: the next write of this tenant sees it before any await.
        self._usage[key] = (usage.plus(rows, size), self._usage[key][1])

    def release(self, tenant: str, kind: str, *, rows: int, size: int) -> None:
        """Takes back what :meth:`admit` counted for a write that did not happen (its
        id was taken, its transaction failed), so refused writes use no quota."""
        key = (tenant, kind)
        cached = self._usage.get(key)
        if cached is None or self._quotas[kind].unlimited:
            return
        usage = cached[0].plus(-rows, -size)
        self._usage[key] = (Usage(max(0, usage.rows), max(0, usage.bytes)), cached[1])

    async def _current(self, key: tuple[str, str]) -> Usage:
        cached = self._usage.get(key)
        if cached is not None:
            self._usage.move_to_end(key)
            if time.monotonic() - cached[1] >= self._refresh_s and key not in self._refreshing:
                if self._refresh_s == 0:
                    return await self._measure(key)
                # Stale: answer from the cache, measure again in the background, so
                # a large tenant's count never holds its writes.
                self._refreshing.add(key)
                task = asyncio.create_task(self._measure(key))
                self._tasks.add(task)
                task.add_done_callback(self._settled)
            return cached[0]
        return await self._measure(key)

    async def settle(self) -> None:
        """Waits for the background measurements in flight (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _settled(self, task: asyncio.Task[Usage]) -> None:
        """A background measurement ended; a failed one (the database away) keeps the
        cached usage, and the next write tries again."""
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            structlog.get_logger("agentmesh.memory.quotas").warning(
                "usage not measured: keeping the cached usage", error=repr(task.exception())
            )

    async def _measure(self, key: tuple[str, str]) -> Usage:
        """Measures once per key at a time; concurrent callers wait for that result."""
        lock = self._measuring.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                cached = self._usage.get(key)
                fresh = cached is not None and time.monotonic() - cached[1] < self._refresh_s
                if not fresh:
                    measured_at = time.monotonic()
                    usage = await measure(self._pool, key[0], key[1])
                    # What was admitted while measuring is in the count already or in
                    # flight; either way the next measurement settles it.
                    self._usage[key] = (usage, measured_at)
                    self._usage.move_to_end(key)
                    while len(self._usage) > MAX_CACHED:
                        self._usage.popitem(last=False)
                return self._usage[key][0]
        finally:
            self._refreshing.discard(key)
            if not lock.locked():
                self._measuring.pop(key, None)
