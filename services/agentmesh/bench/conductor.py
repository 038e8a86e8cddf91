"""Bench `conductor`: Converse turns on the real mesh, beside the raw grpc.aio echo.

Started once: the devstack as `make dev` runs it (PostgreSQL, Redis, Envoy, the four
services; no worker: a turn does not use it) on free ports, and the raw grpc.aio echo
server of the `core` bench (the floor of a gRPC call in Python on this machine). The
Conductor reaches Memory and Agent through Envoy's internal listener, as in production.
One async client measures every case the same way in the same run, interleaved by
round, so the figures compare as ratios:

- **raw echo** `GetAgent` (the floor);
- **Converse, direct gRPC**: one turn with `agents/echo` named (explicit routing), on
  a new session (`create_session`), to the Conductor's own port;
- **Converse, JSON through Envoy**: the same turn as `POST /v1/sessions/{id}:converse`
  on Envoy's external listener (HTTP/1.1, NDJSON), read line by line.

Each case: p50/p99 of the whole turn and of the time to its first event (the routing
decision) over sequential turns, and turns/s with 16 concurrent clients (bounded in
turns and time). Every turn is checked (routing first, the echo's text in `final`),
and the Conductor's CPU per turn is read from /proc.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

import grpc
import httpx

from agentmesh.bench.procs import BenchError, proc_cpu_s, start_echo_server
from agentmesh.bench.suite import Bench, BenchOptions, JsonDict
from agentmesh.core.auth import mint_token
from agentmesh.devstack._proc import ChildProcess
from agentmesh.devstack.stack import DevStack, StackPorts
from agentmesh.v1 import agent_pb2, agent_pb2_grpc, common_pb2, conductor_pb2, conductor_pb2_grpc

TENANT: Final = "bench-conductor"
CONCURRENCY: Final = 16
TARGETS: Final = {"first_event_p50_ms": 10.0}
"""From the plan: the first event of a turn with explicit routing within 10 ms (p50)."""

Turn = Callable[[], Awaitable[float | None]]
"""One call; returns its time to first event in seconds (None for the raw echo)."""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _sequential(call: Turn, count: int) -> dict[str, float]:
    whole: list[float] = []
    first: list[float] = []
    for _ in range(count):
        t0 = time.perf_counter()
        first_s = await call()
        whole.append(time.perf_counter() - t0)
        if first_s is not None:
            first.append(first_s)
    row = {
        "p50_ms": _percentile(whole, 0.5) * 1000,
        "p99_ms": _percentile(whole, 0.99) * 1000,
        "calls": float(count),
    }
    if first:
        row["first_event_p50_ms"] = _percentile(first, 0.5) * 1000
        row["first_event_p99_ms"] = _percentile(first, 0.99) * 1000
    return row


async def _concurrent(call: Turn, count: int, bound_s: float) -> dict[str, float]:
    """``count`` calls by CONCURRENCY workers, stopped at ``bound_s``."""
    done = 0
    deadline = time.monotonic() + bound_s

    async def worker() -> None:
        nonlocal done
        while done < count and time.monotonic() < deadline:
            done += 1
            await call()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return {"turns_per_s": done / (time.perf_counter() - t0), "calls": float(done)}


def _session() -> str:
    return f"bench-{uuid.uuid4().hex}"


async def _measure(  # noqa: PLR0915  # the cases are read best side by side
    opts: BenchOptions, echo_port: int, stack: DevStack, token: str, conductor_pid: int
) -> JsonDict:
    md = (("authorization", f"Bearer {token}"),)
    echo_channel = grpc.aio.insecure_channel(f"127.0.0.1:{echo_port}")
    direct_channel = grpc.aio.insecure_channel(stack.endpoints["conductor"])
    raw: Any = agent_pb2_grpc.AgentServiceStub(echo_channel)
    direct: Any = conductor_pb2_grpc.ConductorServiceStub(direct_channel)
    limits = httpx.Limits(max_connections=CONCURRENCY * 2, max_keepalive_connections=CONCURRENCY)
    http = httpx.AsyncClient(
        base_url=f"http://{stack.endpoints['envoy']}",
        headers={"authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(30.0),
        limits=limits,
    )
    parts = [common_pb2.Part(text="ping")]

    async def raw_echo() -> float | None:
        got = await raw.GetAgent(agent_pb2.GetAgentRequest(name="agents/echo"), metadata=md)
        if got.name != "agents/echo":
            raise BenchError(f"raw echo answered {got.name!r}")
        return None

    async def converse_grpc() -> float | None:
        t0 = time.perf_counter()
        request = conductor_pb2.ConverseRequest(
            session=f"sessions/{_session()}", create_session=True, agent="agents/echo", parts=parts
        )
        first_s: float | None = None
        kinds: list[str] = []
        last = conductor_pb2.ConverseEvent()
        async for event in direct.Converse(request, metadata=md):
            if first_s is None:
                first_s = time.perf_counter() - t0
            kinds.append(event.WhichOneof("event"))
            last = event
        if not kinds or kinds[0] != "routing" or [p.text for p in last.final.parts] != ["ping"]:
            raise BenchError(f"a turn streamed {kinds}, ending with {last}")
        return first_s

    async def converse_json() -> float | None:
        t0 = time.perf_counter()
        body = {"createSession": True, "agent": "agents/echo", "parts": [{"text": "ping"}]}
        first_s: float | None = None
        events: list[JsonDict] = []
        async with http.stream("POST", f"/v1/sessions/{_session()}:converse", json=body) as resp:
            if resp.status_code != 200:
                raise BenchError(
                    f"Converse JSON answered {resp.status_code}: {await resp.aread()!r}"
                )
            async for line in resp.aiter_lines():
                if not line:
                    continue
                if first_s is None:
                    first_s = time.perf_counter() - t0
                events.append(json.loads(line))
        if not events or "routing" not in events[0] or "final" not in events[-1]:
            raise BenchError(f"a JSON turn streamed {events}")
        if events[-1]["final"]["parts"][0]["text"] != "ping":
            raise BenchError(f"a JSON turn answered {events[-1]}")
        return first_s

    cases: dict[str, Turn] = {
        "raw_echo": raw_echo,
        "converse_grpc": converse_grpc,
        "converse_json": converse_json,
    }
    sequential_n = 50 if opts.small else 500
    concurrent_n = 100 if opts.small else 2000
    bound_s = 10.0 if opts.small else 60.0
    results: dict[str, list[JsonDict]] = {name: [] for name in cases}
    try:
        for call in cases.values():  # warm-up: connections, first-use imports, card cache
            for _ in range(10):
                await call()
        rounds = 1 if opts.small else max(1, opts.rounds)
        for _ in range(rounds):
            for name, call in cases.items():
                cpu0 = proc_cpu_s(conductor_pid)
                sequential = await _sequential(call, sequential_n)
                cpu1 = proc_cpu_s(conductor_pid)
                concurrent = await _concurrent(call, concurrent_n, bound_s)
                row: JsonDict = {**sequential, **{f"c16_{k}": v for k, v in concurrent.items()}}
                if name != "raw_echo":
                    row["conductor_cpu_us_per_turn"] = (cpu1 - cpu0) / sequential_n * 1e6
                results[name].append(row)
    finally:
        await http.aclose()
        await echo_channel.close(None)
        await direct_channel.close(None)
    return {name: _median_row(rows) for name, rows in results.items()}


def _median_row(rows: list[JsonDict]) -> JsonDict:
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


def run(opts: BenchOptions) -> JsonDict:
    ports = StackPorts.free()
    stack = DevStack(
        opts.work_dir / "mesh",
        ports,
        worker=False,
        log_level="warning",
        ready_timeout_s=90.0,
        redis_appendonly=False,
        # One tenant drives every case: its run budget would cap the measurement.
        extra_env={"AGENTMESH_AGENT_TENANT_RUNS_PER_MINUTE": "0", "AGENTMESH_DRAIN_GRACE_S": "1"},
    )
    result: JsonDict = {"bench": "conductor"}
    problems: list[str] = []
    echo: ChildProcess | None = None
    try:
        opts.log("conductor: starting the devstack (no worker) and the raw echo")
        stack.start()
        token = mint_token(stack.secret, TENANT, subject="bench", ttl_s=3600)
        # The echo takes a port of its own: the stack's free ports are all in use.
        echo_port = StackPorts.free().conductor
        echo = start_echo_server("raw", echo_port, stack.secret, opts.work_dir)
        measured = asyncio.run(
            _measure(opts, echo_port, stack, token, stack.children["conductor"].pid)
        )
        result["cases"] = measured
        result["targets"] = dict(TARGETS)
        for name, row in measured.items():
            first = (
                f", first event p50 {row['first_event_p50_ms']:.2f} ms"
                if "first_event_p50_ms" in row
                else ""
            )
            opts.log(
                f"conductor {name:<14}: p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms"
                f"{first}, 16 clients {row['c16_turns_per_s']:.0f}/s"
            )
    except Exception as exc:
        problems.append(f"aborted: {type(exc).__name__}: {exc}")
        opts.log(f"conductor: ABORTED: {exc} (logs in {opts.work_dir})")
    finally:
        if echo is not None:
            echo.stop(10.0)
        stack.stop()
    result["problems"] = problems
    result["method"] = {
        "sequential_turns": 50 if opts.small else 500,
        "concurrency": CONCURRENCY,
        "rounds": 1 if opts.small else opts.rounds,
        "client": "one asyncio process: grpc.aio for gRPC, httpx (HTTP/1.1) for JSON",
        "turn": "a new session per turn (create_session), agents/echo named explicitly",
    }
    return result


def _verdict(ok: bool) -> str:
    return "meets" if ok else "**misses**"


def render(results: JsonDict) -> str:
    cases = results.get("cases")
    if not cases:
        return "No results: " + "; ".join(results.get("problems", ["not run"]))
    raw = cases["raw_echo"]
    machine = results.get("machine", {})
    load = machine.get("load_average_at_start", [])
    lines = [
        "## Conductor: Converse turns with the echo agent, vs the raw grpc.aio echo",
        "",
        f"Run {machine.get('date', '?')} with `{results.get('command', '?')}`"
        + (" (**--small: a smoke test, not a measurement**)" if results.get("small") else "")
        + f" on {machine.get('cpu_count', '?')} CPUs ({machine.get('cpu_model', '?')}),"
        f" Python {machine.get('python', '?')}, grpcio {machine.get('grpcio', '?')}; load"
        " average at start " + (f"{load[0]:.1f}" if load else "?") + ".",
        "",
        "The devstack as `make dev` runs it (no worker), the Conductor calling Memory and"
        " Agent through Envoy's internal listener. One turn: a new session"
        " (`create_session`), `agents/echo` named (explicit routing), every event read and"
        " checked. Beside the raw grpc.aio echo, one client process, same run; p50/p99 of"
        f" {results.get('method', {}).get('sequential_turns', '?')} sequential turns,"
        " turns/s with 16 concurrent clients; medians of the rounds.",
        "",
        "| case | turn p50 ms | turn p99 ms | first event p50 ms | first event p99 ms"
        " | turns/s (16 clients) | vs raw echo | Conductor CPU µs/turn |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    names = {
        "raw_echo": "raw echo GetAgent (floor)",
        "converse_grpc": "Converse, direct gRPC",
        "converse_json": "Converse, JSON (NDJSON) through Envoy",
    }
    for key, label in names.items():
        row = cases[key]
        first = (
            f"{row['first_event_p50_ms']:.2f} | {row['first_event_p99_ms']:.2f}"
            if "first_event_p50_ms" in row
            else "- | -"
        )
        cpu = (
            f"{row['conductor_cpu_us_per_turn']:,.0f}"
            if "conductor_cpu_us_per_turn" in row
            else "-"
        )
        lines.append(
            f"| {label} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {first}"
            f" | {row['c16_turns_per_s']:,.0f}"
            f" | {row['c16_turns_per_s'] / raw['c16_turns_per_s']:.3f} | {cpu} |"
        )
    target = TARGETS["first_event_p50_ms"]
    lines += [
        "",
        "Target: first event p50 ≤ "
        f"{target:g} ms with explicit routing: direct gRPC"
        f" {_verdict(cases['converse_grpc']['first_event_p50_ms'] <= target)}, JSON through"
        f" Envoy {_verdict(cases['converse_json']['first_event_p50_ms'] <= target)}.",
    ]
    if results.get("problems"):
        lines += ["", "Problems: " + "; ".join(results["problems"])]
    return "\n".join(lines)


BENCH: Final = Bench(
    name="conductor",
    title="Conductor: Converse turns (gRPC and JSON) vs raw echo",
    run=run,
    render=render,
)
