"""The Memory indexer: adds what bulk imports wrote to the HNSW index, in the background.

An import stores its memories outside the index (``stores/memory_tail.py``) so a load
runs at COPY speed; reads find them exactly meanwhile. Every replica runs
``AGENTMESH_MEMORY_INDEXER_CONCURRENCY`` indexing loops: each adds the oldest
``AGENTMESH_MEMORY_INDEXER_BATCH_SIZE`` waiting memories of any tenant per statement
(rows another loop or replica holds are skipped), goes on at once while batches come
back full, and otherwise waits ``AGENTMESH_MEMORY_INDEXER_INTERVAL_S`` or until an
import on this replica wakes it. A failed batch (database down, statement timeout) is
logged and retried after the interval; it never stops the service, and what earlier
batches did stays done.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Final

import asyncpg  # type: ignore[import-untyped]
import structlog
from prometheus_client import Counter, Gauge

from agentmesh.core.outages import as_unavailable
from agentmesh.core.tasks import stop_task
from agentmesh.memory.settings import MemorySettings
from agentmesh.memory.stores.memory_tail import index_tail, oldest_unindexed, oldest_wait_s

INDEXED: Final = Counter(
    "agentmesh_memory_indexed_total",
    "Imported memories the indexer added to the HNSW index.",
)
BATCHES: Final = Counter(
    "agentmesh_memory_indexer_batches_total",
    "Indexing statements by outcome: done, failed (logged; retried after the interval).",
    ("outcome",),
)
LAG: Final = Gauge(
    "agentmesh_memory_indexer_lag_seconds",
    "Age of the oldest imported memory the HNSW index does not hold yet (0: none wait),"
    " as this replica last saw it.",
)
for _outcome in ("done", "failed"):
    BATCHES.labels(_outcome)


@dataclass
class Indexer:
    """The indexing loops of one replica (see the module docstring)."""

    pool: asyncpg.Pool
    settings: MemorySettings
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        """Starts the loops on the running event loop (none when the interval is 0)."""
        if not self.settings.indexer_interval_s or self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._run(), name=f"memory-indexer-{n}")
            for n in range(self.settings.indexer_concurrency)
        ]

    def wake(self) -> None:
        """An import committed: look now rather than at the next interval."""
        self._wake.set()

    async def stop(self) -> None:
        """Cancels the loops and waits for them: a batch in progress rolls back."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            await stop_task(task, what="memory indexer", timeout_s=30.0)

    async def index_once(self) -> int:
        """One batch: how many memories it added to the index."""
        done = await index_tail(self.pool, limit=self.settings.indexer_batch_size)
        INDEXED.inc(done)
        BATCHES.labels("done").inc()
        return done

    async def _run(self) -> None:
        log = structlog.get_logger("agentmesh.memory.indexer")
        size = self.settings.indexer_batch_size
        while True:
            self._wake.clear()  # a wake-up from here on is for the next look
            try:
                done = await self.index_once()
                if done >= size:
                    continue  # a backlog: the next batch at once
                LAG.set(oldest_wait_s(await oldest_unindexed(self.pool)))
            except Exception as exc:
                BATCHES.labels("failed").inc()
                if isinstance(exc, OSError) or as_unavailable(exc) is not None:
                    log.warning("indexing batch failed", error=repr(exc))
                else:
                    log.exception("indexing batch failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.indexer_interval_s)
