"""The Memory bench's fixed settings, its command-line config and the sizes derived from both."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from agentmesh.bench.suite import BenchOptions

TENANT: Final = "bench"
TARGET_GET_RATIO: Final = 0.5
"""The target: GetSession ≥ 0.5 × the raw echo's requests/s."""
TARGET_SEARCH_P99_MS: Final = 5.0
TARGET_RECALL: Final = 0.95
TARGET_BATCH_RATE: Final = 2000.0
"""Bulk import (ImportMemories), memories/s at 100,000."""
TARGET_BATCHED_OVER_FLOOR: Final = 0.8
"""BatchCreateMemories ≥ 0.8 × the same-run raw INSERT floor of the same batch size."""
TARGET_CREATE_SESSION_P50_MS: Final = 2.5
"""CreateSession p50 at one call in flight."""
TARGET_EMBED_SCALING: Final = 2.0
"""MiniLM writes/s at 16 clients ≥ 2 × writes/s at 1 client."""
TARGET_EMBED_P99_MS: Final = 1000.0
HNSW_M: Final = 16
HNSW_EF_CONSTRUCTION: Final = 64
DEFAULT_EF_SEARCH: Final = 100
PG_SETTINGS: Final = MappingProxyType({"shared_buffers": "1GB"})
"""The 100k table (~160 MB) and its HNSW index (~200 MB) fit in PostgreSQL's own cache,
as they would on a production server; the embedded default (128 MB) is a dev setting."""


@dataclass(frozen=True)
class MemoryConfig:
    """What `--memories` and friends set (via `python -m agentmesh.bench.memory`)."""

    memories: int | None = None
    """Search data size; None: 100,000 (5,000 with --small)."""
    queries: int | None = None
    """Query vectors; None: 200 (100 with --small)."""
    ef_search: tuple[int, ...] = (40, 100, 200)
    import_memories: int | None = None
    """Bulk import size; None: 100,000 (3,000 with --small)."""
    parts: tuple[str, ...] = ()
    """The parts to run (``rpc``, ``ingest``, ``search``, ``bulk``, ``embed``); empty: all."""
    invocation: str | None = None
    """The command line when run as `python -m agentmesh.bench.memory`."""


@dataclass(frozen=True)
class Sizes:
    memories: int
    queries: int
    search_passes: int
    """Sequential passes over the queries per ef_search (latency samples = passes × Q)."""
    concurrent: int
    ingest_single: int
    ingest_concurrent: int
    ingest_batches: dict[int, int]
    """Batch size → number of batches."""
    phase_bound_s: float
    """Time bound of each ingest mode and search loop."""
    embed_writes: dict[int, int]
    """Clients → CreateMemory calls with the MiniLM embedder (the ``embed`` part)."""
    import_memories: int
    """Memories the bulk import part loads."""

    @classmethod
    def of(cls, opts: BenchOptions, config: MemoryConfig) -> Sizes:
        small = opts.small
        return cls(
            memories=config.memories or (5_000 if small else 100_000),
            queries=config.queries or (100 if small else 200),
            search_passes=2 if small else 5,
            concurrent=8,
            ingest_single=150 if small else 1_000,
            ingest_concurrent=300 if small else 4_000,
            ingest_batches={100: 5, 500: 2} if small else {100: 40, 500: 20},
            phase_bound_s=60.0 if small else 300.0,
            embed_writes={1: 20, 16: 64} if small else {1: 150, 16: 800},
            import_memories=config.import_memories or (3_000 if small else 100_000),
        )
