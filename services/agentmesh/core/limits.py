"""Per-tenant concurrency limits on expensive work, so one tenant cannot starve the others.

A service holds one :class:`TenantLimiter` per kind of expensive work (embedding,
vector search, ...). A call of a tenant that already has ``limit`` such calls in
flight in this process is refused at once with RESOURCE_EXHAUSTED and retry advice
(reason ``TENANT_CONCURRENCY_LIMIT``), instead of queueing behind its own burst and
taking the pool, the embedder and the event loop from everyone else. The limit is per
replica: a tenant gets ``limit`` x replicas in all, as it gets a replica's share.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from agentmesh.core.errors import ResourceExhausted

RETRY_AFTER_S: Final = 1.0
"""Retry advice of a refused call: about one short call's time."""


class TenantLimiter:
    """At most ``limit`` calls of one tenant at once inside :meth:`hold`."""

    def __init__(self, limit: int, *, what: str) -> None:
        if limit < 1:
            raise ValueError("a tenant limit is at least 1")
        self._limit = limit
        self._what = what
        self._running: dict[str, int] = {}

    @contextmanager
    def hold(self, tenant: str) -> Iterator[None]:
        """Counts a call of ``tenant`` while the block runs; raises ResourceExhausted
        when the tenant is at its limit. Synchronous, so no await can interleave
        between the check and the count."""
        running = self._running.get(tenant, 0)
        if running >= self._limit:
            raise ResourceExhausted(
                f"this tenant already has {running} {self._what} calls in flight on this"
                f" replica, its limit; retry when one finishes",
                RETRY_AFTER_S,
                reason="TENANT_CONCURRENCY_LIMIT",
            )
        self._running[tenant] = running + 1
        try:
            yield
        finally:
            left = self._running[tenant] - 1
            if left:
                self._running[tenant] = left
            else:
                del self._running[tenant]  # idle tenants take no room

    def running(self, tenant: str) -> int:
        """How many calls of ``tenant`` are in flight."""
        return self._running.get(tenant, 0)
