"""Where the time of one write goes: CreateSession and CreateMemory, from Envoy to commit.

`python -m agentmesh.bench.memory.profile [--calls N] [--out-json PATH]` starts the Memory
bench's stack (PostgreSQL with pg_stat_statements, Redis, the real Memory process, the
real Envoy), fills a namespace with 2,000 memories, then sends N calls of each method one
at a time over three paths (JSON through Envoy, gRPC through Envoy, direct gRPC) and
reports, per call:

- the client's latency on each path (p50), so Envoy's share is the difference;
- the service's own handling time (its `grpc_server_handling_seconds` histogram: from
  the interceptor's start to the response), so the rest of the direct path is gRPC and
  the network between the client and the service;
- the PostgreSQL statements the call ran (pg_stat_statements: how many per call, their
  mean execution time and how often and how long they were planned; BEGIN and COMMIT
  included),
  which gives the round trips and the database's share;
- CPU per call of the service and of PostgreSQL;
- the cost of the in-process steps measured apart: verifying the bearer token, one
  structured log line, the hash embedder on one sentence.

Nothing here is a target; docs/benchmarks.md keeps the notes written from its output.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import statistics
import sys
import tempfile
import time
import timeit
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families

from agentmesh.bench.memory.clients import sync_stub
from agentmesh.bench.memory.stack import Stack, children_cpu_s, start_stack
from agentmesh.bench.memory_data import sentences
from agentmesh.bench.procs import proc_cpu_s
from agentmesh.bench.suite import BenchOptions, JsonDict
from agentmesh.core.auth import mint_token
from agentmesh.devstack.migrate import migrate_up
from agentmesh.devstack.postgres import EmbeddedPostgres
from agentmesh.devstack.roles import create_login_roles
from agentmesh.memory.embedders.hashing import HashEmbedder
from agentmesh.v1 import memory_pb2

TENANT = "profile"
NAMESPACE = "users/u01/notes"
PRELOAD = 2_000


def _handling(stack: Stack, method: str) -> tuple[float, float]:
    """(sum seconds, count) of the service's handling histogram for ``method``."""
    url = f"127.0.0.1:{stack.ports.metrics_memory}"
    conn = http.client.HTTPConnection(url, timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "grpc_server_handling_seconds":
            continue
        for sample in family.samples:
            if sample.labels.get("grpc_method") != method:
                continue
            if sample.name.endswith("_sum"):
                total = sample.value
            elif sample.name.endswith("_count"):
                count = sample.value
    return total, count


async def _statements(url: str, reset: bool) -> list[JsonDict]:
    conn = await asyncpg.connect(url)
    try:
        if reset:
            await conn.execute("SELECT pg_stat_statements_reset()")
            return []
        rows = await conn.fetch(
            "SELECT calls, mean_exec_time, mean_plan_time, plans,"
            " left(regexp_replace(query, '\\s+', ' ', 'g'), 90) AS q"
            " FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database"
            " WHERE datname = current_database()) AND query NOT LIKE '%pg_stat_statements%'"
            " ORDER BY calls DESC, mean_exec_time DESC LIMIT 20"
        )
        return [dict(row) for row in rows]
    finally:
        await conn.close()


def _p50_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def _json_call(conn: http.client.HTTPConnection, path: str, body: str, token: str) -> None:
    conn.request(
        "POST",
        path,
        body=body,
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"{path}: HTTP {response.status}")


def _profile_method(
    stack: Stack,
    token: str,
    method: str,
    calls: int,
    grpc_call: Callable[[Any, tuple[tuple[str, str], ...], int], None],
    json_path: str,
    json_body: Callable[[int], str],
) -> JsonDict:
    md = (("authorization", f"Bearer {token}"),)
    latencies: dict[str, list[float]] = {"json_envoy": [], "grpc_envoy": [], "grpc_direct": []}
    envoy_channel, envoy_stub = sync_stub(f"127.0.0.1:{stack.ports.envoy_external}")
    direct_channel, direct_stub = sync_stub(stack.memory_address)
    http_conn = http.client.HTTPConnection(f"127.0.0.1:{stack.ports.envoy_external}", timeout=30)
    assert stack.memory is not None
    try:
        for i in range(20):  # warm-up of every path
            grpc_call(direct_stub, md, 2_500 + i)
            grpc_call(envoy_stub, md, 2_520 + i)
            _json_call(http_conn, json_path, json_body(2_540 + i), token)
        asyncio.run(_statements(stack.postgres.database_url, reset=True))
        handled0 = _handling(stack, method)
        cpu0 = (proc_cpu_s(stack.memory.pid), children_cpu_s(stack.postgres.pid))
        for i in range(calls):
            t0 = time.perf_counter()
            grpc_call(direct_stub, md, i)
            latencies["grpc_direct"].append(time.perf_counter() - t0)
        cpu1 = (proc_cpu_s(stack.memory.pid), children_cpu_s(stack.postgres.pid))
        handled1 = _handling(stack, method)
        statements = asyncio.run(_statements(stack.postgres.database_url, reset=False))
        for i in range(calls):
            t0 = time.perf_counter()
            grpc_call(envoy_stub, md, 1_000 + i)
            latencies["grpc_envoy"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _json_call(http_conn, json_path, json_body(2_000 + i), token)
            latencies["json_envoy"].append(time.perf_counter() - t0)
    finally:
        http_conn.close()
        envoy_channel.close()
        direct_channel.close()
    handled_s = (handled1[0] - handled0[0]) / max(handled1[1] - handled0[1], 1)
    per_call = [
        {
            "statement": row["q"],
            "per_call": round(row["calls"] / calls, 2),
            "mean_ms": round(row["mean_exec_time"], 4),
            "plans_per_call": round(row["plans"] / calls, 2),
            "mean_plan_ms": round(row["mean_plan_time"], 4),
        }
        for row in statements
        if row["calls"] >= calls // 2
    ]
    return {
        "method": method,
        "calls": calls,
        "p50_ms": {path: _p50_ms(values) for path, values in latencies.items()},
        "service_handling_mean_ms": round(handled_s * 1000, 3),
        "cpu_us_per_call": {
            "service": round((cpu1[0] - cpu0[0]) / calls * 1e6, 1),
            "postgres": round((cpu1[1] - cpu0[1]) / calls * 1e6, 1),
        },
        "statements": per_call,
        "database_ms_per_call": round(sum(s["per_call"] * s["mean_ms"] for s in per_call), 3),
        "planning_ms_per_call": round(
            sum(s["plans_per_call"] * s["mean_plan_ms"] for s in per_call), 3
        ),
    }


def _in_process_costs(secret: str, token: str) -> JsonDict:
    from agentmesh.core.auth import Authenticator  # noqa: PLC0415
    from agentmesh.core.settings import Settings  # noqa: PLC0415

    settings = Settings.from_env(
        {"AGENTMESH_AUTH_HS256_SECRET": secret, "AGENTMESH_ENV": "dev"}, service="memory"
    )
    auth = Authenticator.from_settings(settings)
    header = f"Bearer {token}"
    n = 2000
    verify_us = timeit.timeit(lambda: auth.authenticate(header), number=n) / n * 1e6
    embedder = HashEmbedder(384)
    text = sentences(1)[0]
    embed_us = timeit.timeit(lambda: embedder.embed_one(text), number=n) / n * 1e6
    return {"verify_token_us": round(verify_us, 1), "hash_embed_one_us": round(embed_us, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentmesh.bench.memory.profile")
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--out-json", type=Path, default=None)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="agentmesh-profile-"))
    opts = BenchOptions(
        small=False,
        rounds=1,
        duration_s=1.0,
        warmup_s=0.0,
        max_requests=1,
        work_dir=work,
        command="python -m agentmesh.bench.memory.profile",
    )
    stack = start_stack(opts)
    stack.postgres = EmbeddedPostgres(
        stack.work / "postgres",
        log_path=stack.work / "postgres.log",
        settings={
            **stack.postgres.settings,
            "shared_preload_libraries": "pg_stat_statements",
            "pg_stat_statements.track_utility": "on",
            "pg_stat_statements.track_planning": "on",
        },
    )
    token = mint_token(stack.secret, TENANT, subject="profile", ttl_s=3600)
    if not 1 <= args.calls <= 500:
        parser.error("--calls must be 1-500")
    texts = sentences(PRELOAD + 3_000, seed=11)
    result: JsonDict = {}
    try:
        stack.postgres.start()
        migrate_up(stack.postgres.database_url)
        create_login_roles(stack.postgres)
        asyncio.run(_create_extension(stack.postgres.database_url))
        stack.redis.start()
        stack.start_memory(100)
        stack.start_envoy()
        md = (("authorization", f"Bearer {token}"),)
        channel, stub = sync_stub(stack.memory_address)
        for start in range(0, PRELOAD, 500):
            stub.BatchCreateMemories(
                memory_pb2.BatchCreateMemoriesRequest(
                    requests=[
                        memory_pb2.CreateMemoryRequest(
                            memory=memory_pb2.Memory(namespace=NAMESPACE, content=text)
                        )
                        for text in texts[start : start + 500]
                    ]
                ),
                metadata=md,
            )
        channel.close()
        offset = PRELOAD

        def create_memory(stub: Any, md: tuple[tuple[str, str], ...], i: int) -> None:
            stub.CreateMemory(
                memory_pb2.CreateMemoryRequest(
                    memory=memory_pb2.Memory(namespace=NAMESPACE, content=texts[offset + i % 3000])
                ),
                metadata=md,
            )

        def create_session(stub: Any, md: tuple[tuple[str, str], ...], i: int) -> None:
            stub.CreateSession(
                memory_pb2.CreateSessionRequest(
                    session=memory_pb2.Session(display_name="profile", labels={"env": "bench"})
                ),
                metadata=md,
            )

        result["create_session"] = _profile_method(
            stack,
            token,
            "CreateSession",
            args.calls,
            create_session,
            "/v1/sessions",
            lambda i: '{"displayName":"profile","labels":{"env":"bench"}}',
        )
        result["create_memory"] = _profile_method(
            stack,
            token,
            "CreateMemory",
            args.calls,
            create_memory,
            "/v1/memories",
            lambda i: json.dumps(
                {"namespace": NAMESPACE, "content": f"{texts[offset + i % 3000]} {uuid.uuid4()}"}
            ),
        )
        result["in_process"] = _in_process_costs(stack.secret, token)
    finally:
        stack.close()
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.out_json:
        args.out_json.write_text(text)
    return 0


async def _create_extension(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    finally:
        await conn.close()


if __name__ == "__main__":
    sys.exit(main())
