"""Bench `memory`: the Memory service's hot RPCs, semantic search and ingestion.

One PostgreSQL (embedded, pgvector), one Redis, the real `python -m agentmesh.memory`,
the raw grpc.aio echo server of the `core` bench and one Envoy (the real config; its
`memory` upstream is our service, its `agent` upstream the raw echo) are started once;
then five parts run in this order:

1. **rpc**: `GetSession` and `AppendMessages` with h2load, direct gRPC, gRPC through
   Envoy and JSON through Envoy, at 1 and 64 in flight, each beside the raw echo
   (`GetAgent`, a bare handler returning a prebuilt message) measured the same way in
   the same rounds (`core.measure`). Correctness is checked apart from h2load's counts
   (it calls any HTTP 200 a success): one real call before each run must return the
   expected session/message, every response must be 2xx with the expected body size, the
   service's `grpc_server_handled_total{grpc_code="OK"}` must grow by the calls sent, and
   the append session's `message_count` must grow by exactly the appends sent.
2. **ingest**: `CreateMemory` (sequential and 16 concurrent) and `BatchCreateMemories`
   (100 and 500 per call) with the default deterministic `hash` embedder, on distinct
   generated sentences in 20 namespaces; memories/s, latency, and how many merged.
3. **search**: N synthetic 384-d vectors of intrinsic dimension 32 (never i.i.d. random:
   see `memory_data`) are COPYed straight into `memory.memories` with the HNSW index
   dropped, the exact top-10 of Q query vectors is taken from PostgreSQL's exact scan
   (no index), the index is re-created with `maintenance_work_mem = 1GB` (timed), and
   then `SearchMemories(vector=…)` is called over direct gRPC for every query, for each
   `hnsw.ef_search` (`AGENTMESH_MEMORY_HNSW_EF_SEARCH`, the service restarted for each):
   latency at 1 and at 8 in flight, recall@10 against the exact top-10, and the same
   statement timed on a plain connection (the database's share of the latency).
4. **bulk**: `ImportMemories` of 100,000 memories × 384 with their vectors, beside the
   same run's floors (the same rows COPYed by a plain connection; the indexer's statement
   on plain connections); search checked during the load; time until all are indexed.
5. **embed**: `CreateMemory` with the local MiniLM model at 1 and 16 clients, batching
   across requests off and on.

Sizes: `--small` shrinks everything (a smoke test); `python -m agentmesh.bench.memory
--memories N` sets the search size (default 100,000; 5,000 with `--small`),
`--import-memories N` the bulk import's, `--parts bulk,embed` runs only those parts.

Modules: `options` (fixed settings, `MemoryConfig`, `Sizes`), `stack` (the processes),
`clients` (the bench's gRPC clients), `rpc`, `ingest`, `search`, `bulk` and `embed`
(the parts),
`run` (their order and the method record), `report` (the docs section), `__main__` (the
`python -m agentmesh.bench.memory` flags).
"""

from __future__ import annotations

from typing import Final

from agentmesh.bench.memory.options import MemoryConfig
from agentmesh.bench.memory.report import render
from agentmesh.bench.memory.run import run
from agentmesh.bench.suite import Bench, BenchOptions, JsonDict


def bench(config: MemoryConfig) -> Bench:
    """This bench run with `config` (what `python -m agentmesh.bench.memory` sets)."""

    def run_configured(opts: BenchOptions) -> JsonDict:
        return run(opts, config)

    return Bench(
        name="memory",
        title="Memory: GetSession/AppendMessages vs raw echo, SearchMemories recall, ingest",
        run=run_configured,
        render=render,
    )


BENCH: Final = bench(MemoryConfig())
"""As `python -m agentmesh.bench` runs it: the default sizes."""
