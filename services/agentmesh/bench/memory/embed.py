"""Part 4, writes with a real model: CreateMemory with the local MiniLM embedder at 1
and at 16 clients, the service's cross-request batching of embeddings off
(``embed_batch_max_texts=1``: one model call per request) and on (the default), in
the same run, over direct gRPC."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Final

from agentmesh.bench.memory.clients import Stub, aio_channel, aio_stub, percentiles_ms
from agentmesh.bench.memory.ingest import timed_calls
from agentmesh.bench.memory.options import Sizes
from agentmesh.bench.memory.stack import Stack
from agentmesh.bench.memory_data import sentences
from agentmesh.bench.procs import grpc_metadata, proc_cpu_s
from agentmesh.bench.suite import JsonDict
from agentmesh.v1 import memory_pb2

MODES: Final[tuple[tuple[str, dict[str, str]], ...]] = (
    ("unbatched", {"AGENTMESH_MEMORY_EMBED_BATCH_MAX_TEXTS": "1"}),
    ("batched", {}),
)
"""Each mode restarts the service with these variables (batched: the defaults)."""
WARMUP: Final = 8


async def run_embed(stack: Stack, token: str, sizes: Sizes, ef_search: int) -> JsonDict:
    """Every mode × client count; writes/s, latency and the service's CPU per write."""
    md = grpc_metadata(token, "bench-memory-embed")
    per_mode = WARMUP + sum(sizes.embed_writes.values())
    texts = sentences(per_mode * len(MODES), seed=11)
    rows: list[JsonDict] = []
    problems: list[str] = []
    for index, (mode, extra) in enumerate(MODES):
        stack.start_memory(ef_search, embedder="minilm", extra=extra)
        assert stack.memory is not None
        mine = iter(texts[index * per_mode : (index + 1) * per_mode])
        async with aio_channel(stack.memory_address) as channel:
            rows += await _measure(aio_stub(channel), md, stack, sizes, mode, mine, problems)
    return {"modes": rows, "problems": problems}


async def _measure(
    stub: Stub,
    md: tuple[tuple[str, str | bytes], ...],
    stack: Stack,
    sizes: Sizes,
    mode: str,
    texts: Iterator[str],
    problems: list[str],
) -> list[JsonDict]:
    """One mode: a warm-up, then each client count's writes."""
    assert stack.memory is not None

    async def one(text: str, namespace: str) -> Sequence[memory_pb2.Memory]:
        request = memory_pb2.CreateMemoryRequest(
            memory=memory_pb2.Memory(namespace=namespace, content=text)
        )
        return [await stub.CreateMemory(request, metadata=md, timeout=60.0)]

    for _ in range(WARMUP):  # the model's first calls, the pool
        await one(next(texts), f"embed/{mode}/warm")
    rows: list[JsonDict] = []
    for clients, count in sizes.embed_writes.items():
        work: list[Callable[[], Awaitable[Sequence[memory_pb2.Memory]]]] = [
            functools.partial(one, next(texts), f"embed/{mode}/c{clients}/n{i % 20}")
            for i in range(count)
        ]
        cpu0 = proc_cpu_s(stack.memory.pid)
        latencies, returned, wall, cut = await timed_calls(work, clients, sizes.phase_bound_s)
        cpu = proc_cpu_s(stack.memory.pid) - cpu0
        if len({m.name for m in returned}) != len(returned):
            problems.append(f"embed {mode} × {clients}: duplicate names returned")
        rows.append(
            {
                "mode": mode,
                "clients": clients,
                "writes": len(returned),
                "wall_s": round(wall, 3),
                "writes_per_s": round(len(returned) / wall, 1) if wall else 0.0,
                "latency_ms": percentiles_ms(latencies),
                "server_cpu_us_per_write": round(cpu / max(len(returned), 1) * 1e6),
                "cut_by_time_bound": cut,
            }
        )
    return rows
