"""The Memory bench's run: start the stack, run the three parts in order, record the method."""

from __future__ import annotations

import asyncio
import time
from typing import Final

from agentmesh.bench import core
from agentmesh.bench.memory.bulk import run_bulk
from agentmesh.bench.memory.embed import run_embed
from agentmesh.bench.memory.ingest import run_ingest
from agentmesh.bench.memory.options import (
    DEFAULT_EF_SEARCH,
    PG_SETTINGS,
    TARGET_BATCH_RATE,
    TARGET_BATCHED_OVER_FLOOR,
    TARGET_EMBED_P99_MS,
    TARGET_EMBED_SCALING,
    TARGET_GET_RATIO,
    TARGET_RECALL,
    TARGET_SEARCH_P99_MS,
    TENANT,
    MemoryConfig,
    Sizes,
)
from agentmesh.bench.memory.rpc import run_rpc
from agentmesh.bench.memory.search import run_search
from agentmesh.bench.memory.stack import Stack, start_stack
from agentmesh.bench.memory_data import DIMENSION, INTRINSIC_DIMENSION, NOISE_RATIO
from agentmesh.bench.procs import start_echo_server
from agentmesh.bench.suite import BenchOptions, JsonDict
from agentmesh.core.auth import mint_token
from agentmesh.devstack.migrate import migrate_up
from agentmesh.devstack.roles import create_login_roles

PARTS: Final = ("rpc", "ingest", "search", "bulk", "embed")
"""The parts, in the order they run."""


def _run_part(
    part: str, opts: BenchOptions, stack: Stack, token: str, sizes: Sizes, config: MemoryConfig
) -> JsonDict:
    """Runs one part and logs its headline figures."""
    if part == "rpc":
        return run_rpc(opts, stack, token)
    if part == "search":
        return run_search(opts, stack, token, sizes, config.ef_search)
    if part == "ingest":
        opts.log("memory ingest: CreateMemory / BatchCreateMemories with the hash embedder")
        ingest = asyncio.run(run_ingest(stack, token, sizes))
        for mode in ingest["modes"]:
            opts.log(
                f"memory ingest {mode['mode']:<20}: {mode['memories_per_s']:>7.0f} memories/s, "
                f"p50 {mode['latency_ms'].get('p50', 0):.1f} ms, merged {mode['merged']}"
            )
        return ingest
    if part == "bulk":
        opts.log(f"memory bulk: ImportMemories of {sizes.import_memories:,} memories")
        bulk = asyncio.run(run_bulk(stack, sizes))
        opts.log(
            f"memory bulk: {bulk['ours']['memories_per_s']:,.0f} acknowledged/s"
            f" ({bulk['ours_over_copy_floor']}× COPY floor),"
            f" {bulk['ours']['indexed_per_s']:,.0f} indexed/s"
        )
        return bulk
    opts.log("memory embed: CreateMemory with MiniLM, batching off and on")
    embed = asyncio.run(run_embed(stack, token, sizes, DEFAULT_EF_SEARCH))
    for row in embed["modes"]:
        tail = row["latency_ms"].get("p99", 0)
        opts.log(
            f"memory embed {row['mode']:<9} × {row['clients']:>2}: "
            f"{row['writes_per_s']:>6.1f} writes/s, p99 {tail:.0f} ms"
        )
    return embed


def run(opts: BenchOptions, config: MemoryConfig) -> JsonDict:
    """Starts the stack, runs rpc, ingest, search, bulk and embed in that order (those of
    ``config.parts``, or all), stops the stack; an exception in a part aborts the rest and
    is recorded as a problem."""
    sizes = Sizes.of(opts, config)
    stack = start_stack(opts)
    token = mint_token(stack.secret, TENANT, subject="bench", ttl_s=6 * 3600)
    result: JsonDict = {"bench": "memory"}
    problems: list[str] = []
    t_start = time.monotonic()
    try:
        opts.log(f"memory: starting PostgreSQL, Redis, memory, raw echo, Envoy (in {stack.work})")
        stack.postgres.start()
        migrate_up(stack.postgres.database_url)
        create_login_roles(stack.postgres)
        stack.redis.start()
        stack.echo = start_echo_server("raw", stack.ports.agent, stack.secret, stack.work)
        stack.start_memory(DEFAULT_EF_SEARCH)
        stack.start_envoy()

        for part in PARTS:
            if not config.parts or part in config.parts:
                t0 = time.monotonic()
                result[part] = _run_part(part, opts, stack, token, sizes, config)
                result[part]["wall_s"] = round(time.monotonic() - t0, 1)
                problems += result[part].pop("problems")
    except Exception as exc:
        problems.append(f"aborted: {type(exc).__name__}: {exc}")
        opts.log(f"memory: ABORTED: {exc} (logs in {stack.work})")
    finally:
        errors = stack.close()
        if errors:
            opts.log(f"memory: errors while stopping: {errors}")
    result["method"] = {
        "rounds": opts.rounds,
        "duration_s_per_run": opts.duration_s,
        "warmup_s_per_run": opts.warmup_s,
        "in_flight": list(core.IN_FLIGHT),
        "scenarios": [s.__dict__ for s in core.SCENARIOS],
        "sizes": {
            **{
                k: v
                for k, v in sizes.__dict__.items()
                if k not in ("ingest_batches", "embed_writes")
            },
            "ingest_batches": {str(k): v for k, v in sizes.ingest_batches.items()},
            "embed_writes": {str(k): v for k, v in sizes.embed_writes.items()},
        },
        "ef_search": list(config.ef_search),
        "parts": list(config.parts) or "all",
        "invocation": config.invocation,
        "vectors": {
            "dimension": DIMENSION,
            "intrinsic_dimension": INTRINSIC_DIMENSION,
            "noise_ratio": NOISE_RATIO,
            "generator": "x = normalize(A·z + e), A fixed 384×32 N(0,1), z ~ N(0, I32), "
            "e ~ N(0, (0.1·√32)² I384); queries are fresh draws",
        },
        "postgres_settings": dict(PG_SETTINGS),
        "targets": {
            "get_session_ratio": TARGET_GET_RATIO,
            "search_p99_ms": TARGET_SEARCH_P99_MS,
            "recall_at_10": TARGET_RECALL,
            "import_memories_per_s": TARGET_BATCH_RATE,
            "batched_over_database_floor": TARGET_BATCHED_OVER_FLOOR,
            "minilm_writes_16_over_1": TARGET_EMBED_SCALING,
            "minilm_p99_ms": TARGET_EMBED_P99_MS,
        },
        "wall_s": round(time.monotonic() - t_start, 1),
    }
    result["problems"] = problems
    return result
