"""Bench `core`: our Agent service against the raw grpc.aio echo, direct and via Envoy.

Same method (`agentmesh.v1.AgentService/GetAgent`), same request, same prebuilt response
message on both sides; "raw" has no interceptors at all, "ours" is `python -m
agentmesh.agent` (OpenTelemetry interceptor, our ServerInterceptor: request id, JWT auth,
error mapping, Prometheus metrics). Each is measured:

- direct gRPC (h2c, h2load → server);
- gRPC through Envoy (the real config rendered from `envoy/envoy.yaml.j2`; one Envoy per
  target, so both paths cross an identical Envoy);
- JSON through Envoy's transcoder: `GET /v1/agents/echo` over HTTP/1.1 keep-alive.

at 1 and at 64 requests in flight. Runs of raw and ours alternate (raw first in even
rounds, ours first in odd ones) so drift on the shared machine hits both alike.

Correctness, since h2load counts any HTTP 200 as a success: before each measured run one
real call (grpcio, or urllib for JSON) must return OK and exactly the expected message;
after it, every response must be 2xx and carry the expected number of body bytes (a
gRPC error is a trailers-only response with no body), and for ours the service's own
`grpc_server_handled_total{grpc_code="OK"}` must have grown by the number of calls sent.
"""

from __future__ import annotations

import secrets
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agentmesh.bench import h2load
from agentmesh.bench.echo_server import echo_agent
from agentmesh.bench.procs import (
    GET_AGENT_PATH,
    JSON_PATH,
    check_grpc_call,
    check_json_call,
    handled_ok,
    proc_cpu_s,
    request_frame,
    start_agent,
    start_echo_server,
    start_envoy,
    stop_all,
)
from agentmesh.bench.suite import Bench, BenchOptions, JsonDict
from agentmesh.core.auth import mint_token
from agentmesh.devstack._proc import ChildProcess
from agentmesh.devstack.envoy_process import EnvoyProxy
from agentmesh.devstack.stack import StackPorts

TARGETS: Final = ("raw", "ours")
IN_FLIGHT: Final = (1, 64)
TARGET_RATIO: Final = 0.8
"""The issue's goal: ours ≥ 0.8 × raw requests/s at 64 in flight."""


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    via_envoy: bool
    json: bool

    def shape(self, in_flight: int) -> tuple[int, int]:
        """(connections, streams per connection) for `in_flight` requests in flight.

        gRPC: HTTP/2 multiplexing, 4 connections × 16 streams at 64 (a few long-lived
        channels, as services hold them). JSON: HTTP/1.1, one request per connection, so
        64 keep-alive connections at 64.
        """
        if in_flight == 1:
            return 1, 1
        if self.json:
            return in_flight, 1
        return 4, in_flight // 4


SCENARIOS: Final = (
    Scenario("direct-grpc", "direct, gRPC", via_envoy=False, json=False),
    Scenario("envoy-grpc", "via Envoy, gRPC", via_envoy=True, json=False),
    Scenario("envoy-json", "via Envoy, JSON (HTTP/1.1)", via_envoy=True, json=True),
)


@dataclass
class Target:
    """One side of the comparison: its server and its Envoy."""

    name: str
    server: ChildProcess
    grpc_port: int
    envoy: EnvoyProxy | None
    envoy_port: int
    metrics_port: int | None


@dataclass
class Context:
    opts: BenchOptions
    token: str
    targets: dict[str, Target]
    json_body_bytes: int = 0


def _load(
    ctx: Context, scenario: Scenario, target: Target, in_flight: int, requests: int, timeout: float
) -> h2load.Load:
    port = target.envoy_port if scenario.via_envoy else target.grpc_port
    clients, streams = scenario.shape(in_flight)
    headers = [
        ("authorization", f"Bearer {ctx.token}"),
        ("x-request-id", f"bench-core-{scenario.key}-{target.name}"),
    ]
    if scenario.json:
        return h2load.Load(
            url=f"http://127.0.0.1:{port}{JSON_PATH}",
            clients=clients,
            streams=streams,
            requests=max(requests, clients),
            headers=[*headers, ("accept", "application/json")],
            http1=True,
            timeout_s=timeout,
        )
    return h2load.Load(
        url=f"http://127.0.0.1:{port}{GET_AGENT_PATH}",
        clients=clients,
        streams=streams,
        requests=max(requests, clients),
        headers=[("content-type", "application/grpc"), ("te", "trailers"), *headers],
        body=request_frame(),
        timeout_s=timeout,
    )


def _precheck(ctx: Context, scenario: Scenario, target: Target) -> int:
    """One real call; returns the expected response body bytes of one request."""
    port = target.envoy_port if scenario.via_envoy else target.grpc_port
    request_id = f"bench-core-check-{target.name}"
    if scenario.json:
        ctx.json_body_bytes = check_json_call(
            f"http://127.0.0.1:{port}{JSON_PATH}", ctx.token, request_id
        )
        return ctx.json_body_bytes
    check_grpc_call(f"127.0.0.1:{port}", ctx.token, request_id)
    return 5 + echo_agent().ByteSize()


def measure(ctx: Context, scenario: Scenario, target: Target, in_flight: int) -> JsonDict:
    """Pre-check, warm up, size `-n` from the warm-up rate, measure, check."""
    opts = ctx.opts
    before_ok = handled_ok(target.metrics_port) if target.metrics_port else None
    expected_bytes = _precheck(ctx, scenario, target)
    # Warm-up: a short run sized for the slowest plausible rate (~2,000 req/s at 64 in
    # flight, ~1,000 at 1), its rate sizes the measured run.
    warm_n = max(in_flight * 4, int(opts.warmup_s * (2000 if in_flight > 1 else 1000)))
    warm = h2load.run(_load(ctx, scenario, target, in_flight, warm_n, opts.duration_s * 10 + 30))
    n = int(min(opts.max_requests, max(in_flight * 20, warm.rps * opts.duration_s)))
    load = _load(ctx, scenario, target, in_flight, n, timeout=opts.duration_s * 10 + 30)
    envoy_pid = target.envoy.pid if scenario.via_envoy and target.envoy else None
    cpu0 = (proc_cpu_s(target.server.pid), proc_cpu_s(envoy_pid))
    result = h2load.run(load)
    cpu1 = (proc_cpu_s(target.server.pid), proc_cpu_s(envoy_pid))
    problems = _check(result, expected_bytes)
    record: JsonDict = {
        "scenario": scenario.key,
        "target": target.name,
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
        "non_2xx": result.status_non_2xx,
        "body_bytes_per_ok": round(result.data_bytes_per_ok, 1),
        "expected_body_bytes": expected_bytes,
        "cpu_us_per_request": _cpu_per_request(cpu0, cpu1, result),
        "argv": result.argv,
    }
    if before_ok is not None and target.metrics_port:
        grown = handled_ok(target.metrics_port) - before_ok
        sent = 1 + warm.total + result.total  # pre-check + warm-up + measured
        record["server_handled_ok_delta"] = grown
        record["calls_sent"] = sent
        # Through Envoy a retried call counts twice (only after a failure), so allow a few.
        if not sent <= grown <= sent * 1.01 + 5:
            problems.append(f"server counted {grown:.0f} OK calls, sent {sent}")
    record["problems"] = problems
    return record


def _check(result: h2load.Result, expected_bytes: int) -> list[str]:
    problems = []
    if result.errors:
        problems.append(f"{result.errors} of {result.total} requests were not 2xx")
    # Every OK gRPC response carries the message; an error is trailers-only (no DATA).
    per_ok = result.data_bytes_per_ok
    if result.status_2xx and not expected_bytes <= per_ok <= expected_bytes * 1.05:
        problems.append(f"{per_ok:.1f} body bytes per response, expected {expected_bytes}")
    return problems


def _cpu_per_request(
    before: tuple[float, float], after: tuple[float, float], result: h2load.Result
) -> JsonDict:
    n = max(result.total, 1)
    server = after[0] - before[0]
    envoy = after[1] - before[1]
    return {
        "server": round(server / n * 1e6, 1),
        "envoy": round(envoy / n * 1e6, 1),
        "h2load": round(result.cpu_s / n * 1e6, 1),
        "cores_busy": round((server + envoy + result.cpu_s) / max(result.wall_s, 1e-9), 2),
    }


def run(opts: BenchOptions) -> JsonDict:
    secret = secrets.token_urlsafe(48)
    token = mint_token(secret, "bench", subject="bench")
    ours_ports, raw_ports = StackPorts.free(), StackPorts.free()
    work = Path(tempfile.mkdtemp(prefix="core-", dir=opts.work_dir))
    started: list[tuple[str, object]] = []
    runs: list[JsonDict] = []
    try:
        opts.log(f"core: starting raw echo, agent and two Envoys (logs in {work})")
        raw = start_echo_server("raw", raw_ports.agent, secret, work)
        started.append(("raw", raw))
        ours = start_agent(ours_ports.agent, ours_ports.metrics_agent, secret, work)
        started.append(("agent", ours))
        raw_envoy = start_envoy("raw", raw_ports, raw_ports.agent, work)
        started.append(("envoy-raw", raw_envoy))
        ours_envoy = start_envoy("ours", ours_ports, ours_ports.agent, work)
        started.append(("envoy-ours", ours_envoy))
        ctx = Context(
            opts=opts,
            token=token,
            targets={
                "raw": Target(
                    "raw", raw, raw_ports.agent, raw_envoy, raw_ports.envoy_external, None
                ),
                "ours": Target(
                    "ours",
                    ours,
                    ours_ports.agent,
                    ours_envoy,
                    ours_ports.envoy_external,
                    ours_ports.metrics_agent,
                ),
            },
        )
        for rnd in range(opts.rounds):
            order = TARGETS if rnd % 2 == 0 else tuple(reversed(TARGETS))
            for scenario in SCENARIOS:
                for in_flight in IN_FLIGHT:
                    for name in order:
                        record = measure(ctx, scenario, ctx.targets[name], in_flight)
                        record["round"] = rnd
                        runs.append(record)
                        opts.log(
                            f"core r{rnd} {scenario.key:<11} {in_flight:>2} in flight "
                            f"{name:<4}: {record['rps']:>8.0f} req/s, "
                            f"p50 {record['latency_us'].get('p50', 0) / 1000:.2f} ms, "
                            f"p99 {record['latency_us'].get('p99', 0) / 1000:.2f} ms, "
                            f"server {record['cpu_us_per_request']['server']:.0f} µs CPU/req"
                            + (f"  PROBLEMS: {record['problems']}" if record["problems"] else "")
                        )
    finally:
        errors = stop_all(list(reversed(started)))
        if errors:
            opts.log(f"core: errors while stopping: {errors}")
    summary = summarize(runs)
    problems = [
        f"{r['scenario']}/{r['target']}/{r['in_flight']}: {p}" for r in runs for p in r["problems"]
    ]
    return {
        "bench": "core",
        "method": {
            "rounds": opts.rounds,
            "duration_s_per_run": opts.duration_s,
            "warmup_s_per_run": opts.warmup_s,
            "target_ratio": TARGET_RATIO,
            "scenarios": [s.__dict__ for s in SCENARIOS],
            "in_flight": list(IN_FLIGHT),
        },
        "summary": summary,
        "problems": problems,
        "runs": runs,
    }


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summarize(runs: Sequence[JsonDict]) -> list[JsonDict]:
    """Per (scenario, in flight): medians over rounds of each target, and ours/raw."""
    rows = []
    for scenario in SCENARIOS:
        for in_flight in IN_FLIGHT:
            row: JsonDict = {"scenario": scenario.key, "label": scenario.label}
            row["in_flight"] = in_flight
            for target in TARGETS:
                mine = [
                    r
                    for r in runs
                    if r["scenario"] == scenario.key
                    and r["in_flight"] == in_flight
                    and r["target"] == target
                ]
                if not mine:
                    continue
                row[target] = {
                    "rps": round(_median([r["rps"] for r in mine]), 1),
                    "p50_us": round(_median([r["latency_us"]["p50"] for r in mine]), 1),
                    "p99_us": round(_median([r["latency_us"]["p99"] for r in mine]), 1),
                    "errors": sum(r["errors"] for r in mine),
                    "server_cpu_us": round(
                        _median([r["cpu_us_per_request"]["server"] for r in mine]), 1
                    ),
                    "envoy_cpu_us": round(
                        _median([r["cpu_us_per_request"]["envoy"] for r in mine]), 1
                    ),
                    "h2load_cpu_us": round(
                        _median([r["cpu_us_per_request"]["h2load"] for r in mine]), 1
                    ),
                    "rounds": len(mine),
                    "rps_per_round": [r["rps"] for r in mine],
                }
            if "raw" in row and "ours" in row:
                raw, ours = row["raw"], row["ours"]
                row["ratio_rps"] = round(ours["rps"] / raw["rps"], 3) if raw["rps"] else None
                row["ratio_p50"] = (
                    round(ours["p50_us"] / raw["p50_us"], 3) if raw["p50_us"] else None
                )
                row["ratio_per_round"] = _paired_ratios(runs, scenario.key, in_flight)
            rows.append(row)
    return rows


def _paired_ratios(runs: Sequence[JsonDict], scenario: str, in_flight: int) -> list[float]:
    by_round: dict[int, dict[str, float]] = {}
    for r in runs:
        if r["scenario"] == scenario and r["in_flight"] == in_flight:
            by_round.setdefault(r["round"], {})[r["target"]] = r["rps"]
    return [
        round(v["ours"] / v["raw"], 3)
        for _, v in sorted(by_round.items())
        if v.get("raw") and "ours" in v
    ]


def _ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def _pair(row: JsonDict, key: str) -> str:
    return f"{row['raw'][key]:.0f} / {row['ours'][key]:.0f}"


def render(result: JsonDict) -> str:
    machine: dict[str, Any] = result.get("machine", {})
    method = result["method"]
    lines = [
        "## Core: Agent `GetAgent`, ours vs the raw grpc.aio echo",
        "",
        f"Run {machine.get('date', '?')} with `{result.get('command', '?')}` on "
        f"{machine.get('cpu_count', '?')} CPUs ({machine.get('cpu_model', '?')}), "
        f"Python {machine.get('python', '?')}, grpcio {machine.get('grpcio', '?')}, "
        f"Envoy {machine.get('envoy', '?')}, {machine.get('h2load', '?')}. "
        f"{method['rounds']} interleaved rounds of ~{method['duration_s_per_run']:g} s per "
        "measurement (each after its own warm-up run); medians over rounds.",
        "",
        "| path | in flight | raw req/s | ours req/s | ours/raw req/s "
        "| raw p50 / p99 ms | ours p50 / p99 ms | ours/raw p50 (lower is better) "
        "| server CPU µs/req raw / ours | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["summary"]:
        raw, ours = row.get("raw"), row.get("ours")
        if not raw or not ours:
            continue
        lines.append(
            f"| {row['label']} | {row['in_flight']} | {raw['rps']:,.0f} | {ours['rps']:,.0f} "
            f"| **{row['ratio_rps']:.2f}** | {_ms(raw['p50_us'])} / {_ms(raw['p99_us'])} "
            f"| {_ms(ours['p50_us'])} / {_ms(ours['p99_us'])} | {row['ratio_p50']:.2f} "
            f"| {raw['server_cpu_us']:.0f} / {ours['server_cpu_us']:.0f} "
            f"| {raw['errors'] + ours['errors']} |"
        )
    target = method["target_ratio"]
    verdicts = []
    for row in result["summary"]:
        if row["in_flight"] == max(IN_FLIGHT) and row.get("ratio_rps") is not None:
            ok = row["ratio_rps"] >= target
            verdicts.append(
                f"{row['label']}: {row['ratio_rps']:.2f}× "
                f"({'meets' if ok else 'below'} the {target}× target; per round "
                f"{', '.join(f'{x:.2f}' for x in row['ratio_per_round'])})"
            )
    lines += ["", "At 64 in flight, ours/raw requests/s: " + "; ".join(verdicts) + "."]
    cpu = [
        f"{row['label']}: Envoy {_pair(row, 'envoy_cpu_us')}, h2load {_pair(row, 'h2load_cpu_us')}"
        for row in result["summary"]
        if row["in_flight"] == max(IN_FLIGHT) and row.get("raw") and row.get("ours")
    ]
    load = machine.get("load_average_at_start", [])
    lines += [
        "",
        "Other processes' CPU µs per request at 64 in flight (raw / ours): "
        + "; ".join(cpu)
        + ". Load average when the run started: "
        + (f"{load[0]:.1f}" if load else "?")
        + " (anything above ~0 is other work sharing the 2 cores).",
    ]
    if result.get("problems"):
        lines += ["", "**Correctness problems:** " + "; ".join(result["problems"])]
    else:
        lines += ["", "Correctness checks passed on every run (see method)."]
    lines += ["", _METHOD_NOTES]
    return "\n".join(lines)


_METHOD_NOTES = """\
**Method.** *raw* is a plain `grpc.aio.server()` with no interceptors serving
`agentmesh.v1.AgentService/GetAgent` with a bare handler that returns the prebuilt
`builtin_registry().proto("echo")` message, registered as generated code registers a
servicer (generic + registered-method handlers; `agentmesh.bench.echo_server`); *ours* is the
real service, `python -m agentmesh.agent` (our one `ServerInterceptor`: OpenTelemetry server
span from the SDK TracerProvider, non-recording because no exporter is configured (sampler
ALWAYS_OFF, as in any deployment without a collector); request id, HS256 JWT auth from
a cached token, error mapping, Prometheus metrics; log level info). Both run on uvloop, as
every service does (ADR 0014), so the ratio measures our code, not the event loop. Same
request (`name: "agents/echo"`), same response bytes. Every call carries
`authorization: Bearer <token>` and `x-request-id`. Each target has its own Envoy
(`envoy --concurrency 1`) rendered from `envoy/envoy.yaml.j2` by `dev_values` +
`render_envoy_config`, identical except for the agent upstream port (JSON access log on,
as in dev). Load: h2load, one thread; gRPC over h2c with 1×1 or 4 connections × 16
streams; JSON is `GET /v1/agents/echo` over **HTTP/1.1** keep-alive with 1 or 64
connections. Each measurement is a warm-up run (~1 s) and a measured run whose `-n` is
the warm-up rate × the run length (bounded by `--max-requests`, and h2load is killed
after a time bound). Latency percentiles are exact, from h2load's per-request
`--log-file`. CPU µs/request is the process's user+system time over the measured run
divided by its requests (from `/proc/<pid>/stat`, 10 ms ticks).

**Correctness.** h2load counts any HTTP 200 as success, so: before each measured run one
real grpcio call (or an HTTP GET for JSON) must return OK and exactly the expected
message; after it, every response must be 2xx with the expected body size (a failed gRPC
call is trailers-only, with no body); and for ours the service's
`grpc_server_handled_total{grpc_method="GetAgent",grpc_code="OK"}` must have grown by the
number of calls sent.

**Caveats.** Two shared, noisy cores: h2load, the server and Envoy compete for CPU, so
the via-Envoy figures measure CPU contention (Envoy's CPU is taken from the Python
server) more than Envoy's own latency; the ratios, taken in the same run with
alternating order, are the meaningful numbers, the absolute ones move by ±20 % between
runs. One server process per target (grpc.aio is one event loop, effectively one core).
This VM is slower than the machine of `TOOLCHAIN.md` (~12,000 req/s for a grpc.aio echo
there, a few thousand here; a CPython loop iteration takes ~75 ns here): compare ratios,
not absolute figures, across machines.
"""


BENCH: Final = Bench(
    name="core",
    title="Agent GetAgent: ours vs raw grpc.aio echo",
    run=run,
    render=render,
)
