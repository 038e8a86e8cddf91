"""Bench `agent`: agent runs on the real Agent service, beside the raw grpc.aio echo.

Started once: embedded PostgreSQL and Redis, the real `python -m agentmesh.memory`
(threads are checkpointed there), the real `python -m agentmesh.agent` pointed at it,
and the raw grpc.aio echo server of the `core` bench (a bare handler returning a
prebuilt message: the floor of a gRPC call in Python on this machine). One async
grpc.aio client measures every case the same way in the same run, interleaved by
round, so the figures compare as ratios:

- **raw echo** `GetAgent` (the floor);
- **InvokeAgent stateless**: `agents/echo`, no thread (nothing written);
- **InvokeAgent threaded**: `agents/echo` on a new thread per call (its state read
  from and written to Memory: the checkpointed path);
- **StreamAgent time to first event**: stateless, until the first event arrives;
- **InvokeAgent as JSON through Envoy**, stateless and threaded: the real Envoy config
  (transcoder, routes, health checks) in front of the same Agent process, one HTTP/1.1
  keep-alive client (a connection per concurrent caller).

Each case: p50/p99 of sequential calls, and runs/s with 16 concurrent clients (bounded
in calls and time). Every response is checked (the echo's text, a thread id, a final
event), and the Agent process's CPU per run is read from /proc.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

import grpc
import httpx

from agentmesh.bench.memory.stack import start_stack
from agentmesh.bench.procs import BenchError, bench_env, proc_cpu_s, start_echo_server
from agentmesh.bench.suite import Bench, BenchOptions, JsonDict
from agentmesh.core.auth import mint_token
from agentmesh.devstack._proc import ChildProcess
from agentmesh.devstack.migrate import migrate_up
from agentmesh.devstack.roles import create_login_roles
from agentmesh.devstack.stack import check_health
from agentmesh.v1 import agent_pb2, agent_pb2_grpc, common_pb2

TENANT: Final = "bench-agent"
CONCURRENCY: Final = 16
TARGETS: Final = {
    "stateless_p50_ms": 3.0,
    "threaded_p50_ms": 15.0,
    "first_event_p50_ms": 5.0,
    "runs_per_s_16": 300.0,
}
AGENT_SERVICE: Final = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name

Call = Callable[[], Awaitable[None]]


def _start_agent(port: int, memory_port: int, secret: str, opts: BenchOptions) -> ChildProcess:
    env = bench_env(
        {
            "AGENTMESH_ENV": "dev",
            "AGENTMESH_GRPC_HOST": "127.0.0.1",
            "AGENTMESH_GRPC_PORT": str(port),
            "AGENTMESH_METRICS_PORT": "0",
            "AGENTMESH_AUTH_HS256_SECRET": secret,
            "AGENTMESH_MEMORY_ADDR": f"127.0.0.1:{memory_port}",
            "AGENTMESH_LOG_LEVEL": "warning",
            "AGENTMESH_DRAIN_GRACE_S": "1",
            # One tenant drives every case: its run budget would cap the measurement.
            "AGENTMESH_AGENT_TENANT_RUNS_PER_MINUTE": "0",
        }
    )
    child = ChildProcess(
        "agent",
        [sys.executable, "-m", "agentmesh.agent"],
        log_path=opts.work_dir / "agent.log",
        env=env,
    )
    deadline = time.monotonic() + 60
    while check_health(f"127.0.0.1:{port}", AGENT_SERVICE, timeout_s=0.5) != "SERVING":
        if child.returncode() is not None or time.monotonic() > deadline:
            raise BenchError(f"agent did not start:\n{child.log_tail()}")
        time.sleep(0.2)
    return child


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _sequential(call: Call, count: int) -> dict[str, float]:
    latencies = []
    for _ in range(count):
        t0 = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - t0)
    return {
        "p50_ms": _percentile(latencies, 0.5) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "calls": float(count),
    }


async def _concurrent(call: Call, count: int, bound_s: float) -> dict[str, float]:
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
    return {"runs_per_s": done / (time.perf_counter() - t0), "calls": float(done)}


async def _envoy_ready(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> None:
    """Until Envoy's health check has admitted the Agent upstream (bounded)."""
    deadline = time.monotonic() + 30
    while True:
        response = await http.post(url, headers=headers, json={"parts": [{"text": "ping"}]})
        if response.status_code == 200:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"Envoy answered {response.status_code}: {response.text[:300]}")
        await asyncio.sleep(0.25)


async def _measure(  # noqa: PLR0915  # the cases are read best side by side
    opts: BenchOptions,
    echo_port: int,
    agent_port: int,
    token: str,
    agent_pid: int,
    envoy_port: int,
) -> JsonDict:
    md = (("authorization", f"Bearer {token}"),)
    headers = {"authorization": f"Bearer {token}"}
    invoke_url = f"http://127.0.0.1:{envoy_port}/v1/agents/echo:invoke"
    http = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY),
        timeout=30.0,
        trust_env=False,
    )
    echo_channel = grpc.aio.insecure_channel(f"127.0.0.1:{echo_port}")
    agent_channel = grpc.aio.insecure_channel(f"127.0.0.1:{agent_port}")
    raw: Any = agent_pb2_grpc.AgentServiceStub(echo_channel)
    ours: Any = agent_pb2_grpc.AgentServiceStub(agent_channel)
    parts = [common_pb2.Part(text="ping")]

    async def raw_echo() -> None:
        got = await raw.GetAgent(agent_pb2.GetAgentRequest(name="agents/echo"), metadata=md)
        if got.name != "agents/echo":
            raise BenchError(f"raw echo answered {got.name!r}")

    async def stateless() -> None:
        got = await ours.InvokeAgent(
            agent_pb2.InvokeAgentRequest(name="agents/echo", parts=parts), metadata=md
        )
        if got.result.parts[0].text != "ping":
            raise BenchError(f"stateless echo answered {got.result}")

    async def threaded() -> None:
        thread = f"b{uuid.uuid4().hex}"
        got = await ours.InvokeAgent(
            agent_pb2.InvokeAgentRequest(name="agents/echo", thread_id=thread, parts=parts),
            metadata=md,
        )
        if got.result.thread_id != thread or got.result.parts[0].text != "ping":
            raise BenchError(f"threaded echo answered {got.result}")

    first_event: list[float] = []

    async def stream_first_event() -> None:
        t0 = time.perf_counter()
        call = ours.StreamAgent(
            agent_pb2.StreamAgentRequest(name="agents/echo", parts=parts), metadata=md
        )
        seen_first = False
        last = agent_pb2.AgentEvent()
        async for event in call:
            if not seen_first:
                first_event.append(time.perf_counter() - t0)
                seen_first = True
            last = event
        if not last.HasField("final"):
            raise BenchError("a stream did not end with final")

    async def json_stateless() -> None:
        got = await http.post(invoke_url, headers=headers, json={"parts": [{"text": "ping"}]})
        if got.status_code != 200 or got.json()["result"]["parts"][0]["text"] != "ping":
            raise BenchError(f"JSON stateless echo answered {got.status_code}: {got.text[:300]}")

    async def json_threaded() -> None:
        thread = f"b{uuid.uuid4().hex}"
        got = await http.post(
            invoke_url, headers=headers, json={"threadId": thread, "parts": [{"text": "ping"}]}
        )
        result = got.json().get("result", {}) if got.status_code == 200 else {}
        if result.get("threadId") != thread or result["parts"][0]["text"] != "ping":
            raise BenchError(f"JSON threaded echo answered {got.status_code}: {got.text[:300]}")

    await _envoy_ready(http, invoke_url, headers)
    cases: dict[str, Call] = {
        "raw_echo": raw_echo,
        "invoke_stateless": stateless,
        "invoke_threaded": threaded,
        "stream": stream_first_event,
        "json_stateless": json_stateless,
        "json_threaded": json_threaded,
    }
    sequential_n = 100 if opts.small else 1000
    concurrent_n = 200 if opts.small else 5000
    bound_s = 10.0 if opts.small else 60.0
    results: dict[str, list[JsonDict]] = {name: [] for name in cases}
    try:
        for call in cases.values():  # warm-up: connections, first-use imports
            for _ in range(20):
                await call()
        rounds = 1 if opts.small else max(1, opts.rounds)
        for _ in range(rounds):
            for name, call in cases.items():
                first_event.clear()
                cpu0 = proc_cpu_s(agent_pid)
                sequential = await _sequential(call, sequential_n)
                cpu1 = proc_cpu_s(agent_pid)
                # Time to first event of the sequential calls only (one in flight).
                first_event_p50_ms = _percentile(first_event, 0.5) * 1000 if first_event else 0.0
                concurrent = await _concurrent(call, concurrent_n, bound_s)
                row: JsonDict = {**sequential, **{f"c16_{k}": v for k, v in concurrent.items()}}
                if name != "raw_echo":
                    row["agent_cpu_us_per_call"] = (cpu1 - cpu0) / sequential_n * 1e6
                if name == "stream":
                    row["first_event_p50_ms"] = first_event_p50_ms
                results[name].append(row)
    finally:
        await echo_channel.close(None)
        await agent_channel.close(None)
        await http.aclose()
    return {name: _median_row(rows) for name, rows in results.items()}


def _median_row(rows: list[JsonDict]) -> JsonDict:
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


def run(opts: BenchOptions) -> JsonDict:
    stack = start_stack(opts)
    secret = stack.secret
    token = mint_token(secret, TENANT, subject="bench", ttl_s=3600)
    result: JsonDict = {"bench": "agent"}
    problems: list[str] = []
    agent: ChildProcess | None = None
    echo: ChildProcess | None = None
    try:
        opts.log("agent: starting PostgreSQL, Redis, memory, agent, raw echo")
        stack.postgres.start()
        migrate_up(stack.postgres.database_url)
        create_login_roles(stack.postgres)
        stack.redis.start()
        stack.start_memory(stack.ef_search)
        echo = start_echo_server("raw", stack.ports.conductor, secret, opts.work_dir)
        agent = _start_agent(stack.ports.agent, stack.ports.memory, secret, opts)
        stack.start_envoy()
        measured = asyncio.run(
            _measure(
                opts,
                stack.ports.conductor,
                stack.ports.agent,
                token,
                agent.pid,
                stack.ports.envoy_external,
            )
        )
        result["cases"] = measured
        result["targets"] = dict(TARGETS)
        for name, row in measured.items():
            opts.log(
                f"agent {name:<17}: p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms,"
                f" 16 clients {row['c16_runs_per_s']:.0f}/s"
            )
    except Exception as exc:
        problems.append(f"aborted: {type(exc).__name__}: {exc}")
        opts.log(f"agent: ABORTED: {exc} (logs in {opts.work_dir})")
    finally:
        for child in (agent, echo):
            if child is not None:
                child.stop(10.0)
        stack.close()
    result["problems"] = problems
    result["method"] = {
        "sequential_calls": 100 if opts.small else 1000,
        "concurrency": CONCURRENCY,
        "rounds": 1 if opts.small else opts.rounds,
        "client": "one grpc.aio client process for every case",
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
        "## Agent: InvokeAgent and StreamAgent on the echo agent, vs the raw grpc.aio echo",
        "",
        f"Run {machine.get('date', '?')} with `{results.get('command', '?')}`"
        + (" (**--small: a smoke test, not a measurement**)" if results.get("small") else "")
        + f" on {machine.get('cpu_count', '?')} CPUs ({machine.get('cpu_model', '?')}),"
        f" Python {machine.get('python', '?')}, grpcio {machine.get('grpcio', '?')}; load"
        " average at start " + (f"{load[0]:.1f}" if load else "?") + ".",
        "",
        "Agent runs on the real Agent service (echo agent; threads checkpointed in the real"
        " Memory service) beside the raw grpc.aio echo, one async client, same run; p50/p99"
        " of 1,000 sequential calls, runs/s with 16 concurrent clients; medians of the"
        " rounds. The JSON rows go through the real Envoy (transcoder, HTTP/1.1 keep-alive,"
        " a connection per concurrent caller) to the same Agent process.",
        "",
        "| case | p50 ms | p99 ms | runs/s (16 clients) | vs raw echo runs/s | agent CPU µs/run |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    names = {
        "raw_echo": "raw echo GetAgent (floor)",
        "invoke_stateless": "InvokeAgent, stateless",
        "invoke_threaded": "InvokeAgent, new thread (checkpointed in Memory)",
        "stream": "StreamAgent, whole stream",
        "json_stateless": "InvokeAgent as JSON via Envoy, stateless",
        "json_threaded": "InvokeAgent as JSON via Envoy, new thread",
    }
    for key, label in names.items():
        if key not in cases:
            continue
        row = cases[key]
        cpu = f"{row['agent_cpu_us_per_call']:.0f}" if "agent_cpu_us_per_call" in row else "-"
        lines.append(
            f"| {label} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f}"
            f" | {row['c16_runs_per_s']:,.0f} | {row['c16_runs_per_s'] / raw['c16_runs_per_s']:.2f}"
            f" | {cpu} |"
        )
    stream = cases["stream"]
    stateless_rps = cases["invoke_stateless"]["c16_runs_per_s"]
    lines += [
        "",
        f"StreamAgent time to first event p50: **{stream['first_event_p50_ms']:.2f} ms**.",
        "",
        "Targets: "
        + "; ".join(
            [
                f"stateless invoke p50 ≤ {TARGETS['stateless_p50_ms']:g} ms:"
                f" {_verdict(cases['invoke_stateless']['p50_ms'] <= TARGETS['stateless_p50_ms'])}",
                f"threaded invoke p50 ≤ {TARGETS['threaded_p50_ms']:g} ms:"
                f" {_verdict(cases['invoke_threaded']['p50_ms'] <= TARGETS['threaded_p50_ms'])}",
                f"first event p50 ≤ {TARGETS['first_event_p50_ms']:g} ms:"
                f" {_verdict(stream['first_event_p50_ms'] <= TARGETS['first_event_p50_ms'])}",
                f"≥ {TARGETS['runs_per_s_16']:g} runs/s with 16 clients (stateless):"
                f" {_verdict(stateless_rps >= TARGETS['runs_per_s_16'])}",
            ]
        )
        + ".",
    ]
    if results.get("problems"):
        lines += ["", "Problems: " + "; ".join(results["problems"])]
    return "\n".join(lines)


BENCH: Final = Bench(
    name="agent",
    title="Agent: InvokeAgent/StreamAgent on the echo agent vs raw echo",
    run=run,
    render=render,
)
