"""Bench `core-layers`: where ours spends its time, one server layer at a time.

Direct gRPC, 64 in flight, `GetAgent` against each `echo_server` variant (raw → real
servicer → + our interceptor / + OpenTelemetry / + both) and the real `python -m
agentmesh.agent`; all are started at once and measured in interleaved rounds. The server
process's CPU time per request (user + system, all threads, from /proc) is the figure to
compare: at 64 in flight the single-threaded grpc.aio server is the bottleneck, so its
CPU µs/request sets the throughput, and the difference between two variants is the
per-call cost of the layer that differs.

In-process micro-timings of the pieces of our interceptor (token cache hit, metrics,
context binding, request-id check) complete the picture.
"""

from __future__ import annotations

import secrets
import statistics
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from agentmesh.bench.core import SCENARIOS, Context, Target, measure
from agentmesh.bench.echo_server import VARIANTS
from agentmesh.bench.procs import start_agent, start_echo_server, stop_all
from agentmesh.bench.suite import Bench, BenchOptions, JsonDict
from agentmesh.core.auth import Authenticator, mint_token
from agentmesh.devstack._proc import ChildProcess
from agentmesh.devstack.stack import StackPorts

IN_FLIGHT: Final = 64
AGENT: Final = "agent"
ORDER: Final = (*VARIANTS, AGENT)
#: (label, variant with the layer, variant without it)
LAYERS: Final = (
    ("AgentServicer instead of a bare handler", "servicer", "raw"),
    ("our ServerInterceptor, tracing included", "servicer+ours", "servicer"),
    (
        "the same, wrapped at registration instead of an interceptor chain",
        "servicer+ours@registration",
        "servicer",
    ),
    ("opentelemetry-instrumentation-grpc aio interceptor (replaced)", "servicer+otel", "servicer"),
    ("health, reflection, /metrics server (full process)", AGENT, "servicer+ours"),
    ("everything: ours minus raw", AGENT, "raw"),
)


def run(opts: BenchOptions) -> JsonDict:
    secret = secrets.token_urlsafe(48)
    token = mint_token(secret, "bench", subject="bench")
    # StackPorts.free() hands out 14 distinct free loopback ports; we need 7.
    free = list(StackPorts.free().as_dict().values())
    variant_ports = dict(zip(ORDER, free, strict=False))
    metrics_port = free[-1]
    work = Path(tempfile.mkdtemp(prefix="layers-", dir=opts.work_dir))
    started: list[tuple[str, object]] = []
    runs: list[JsonDict] = []
    direct = SCENARIOS[0]
    try:
        opts.log(f"core-layers: starting {len(ORDER)} servers (logs in {work})")
        targets: dict[str, Target] = {}
        for name in ORDER:
            port = variant_ports[name]
            child: ChildProcess
            if name == AGENT:
                child = start_agent(port, metrics_port, secret, work)
            else:
                child = start_echo_server(name, port, secret, work)
            started.append((name, child))
            metrics = metrics_port if name == AGENT else None
            targets[name] = Target(name, child, port, None, 0, metrics)
        ctx = Context(opts=opts, token=token, targets=targets)
        for rnd in range(opts.rounds):
            order = ORDER if rnd % 2 == 0 else tuple(reversed(ORDER))
            for name in order:
                record = measure(ctx, direct, targets[name], IN_FLIGHT)
                record["round"] = rnd
                runs.append(record)
                opts.log(
                    f"core-layers r{rnd} {name:<19}: {record['rps']:>7.0f} req/s, server "
                    f"{record['cpu_us_per_request']['server']:>5.0f} µs CPU/req"
                    + (f"  PROBLEMS: {record['problems']}" if record["problems"] else "")
                )
    finally:
        errors = stop_all(list(reversed(started)))
        if errors:
            opts.log(f"core-layers: errors while stopping: {errors}")
    variants: dict[str, JsonDict] = {}
    for name in ORDER:
        mine = [r for r in runs if r["target"] == name]
        if mine:
            variants[name] = {
                "rps": round(statistics.median(r["rps"] for r in mine), 1),
                "server_cpu_us": round(
                    statistics.median(r["cpu_us_per_request"]["server"] for r in mine), 1
                ),
                "p50_us": round(statistics.median(r["latency_us"]["p50"] for r in mine), 1),
            }
    layers = []
    for label, with_layer, without in LAYERS:
        if with_layer in variants and without in variants:
            a, b = variants[with_layer], variants[without]
            layers.append(
                {
                    "layer": label,
                    "with": with_layer,
                    "without": without,
                    "server_cpu_us_per_call": round(a["server_cpu_us"] - b["server_cpu_us"], 1),
                    "rps_ratio": round(a["rps"] / b["rps"], 3) if b["rps"] else None,
                }
            )
    problems = [f"{r['target']}: {p}" for r in runs for p in r["problems"]]
    return {
        "bench": "core-layers",
        "method": {"rounds": opts.rounds, "in_flight": IN_FLIGHT, "duration_s": opts.duration_s},
        "variants": variants,
        "layers": layers,
        "micro": micro_timings(secret, token),
        "problems": problems,
        "runs": runs,
    }


def _us_per_call(fn: Callable[[], Any], number: int = 20_000) -> float:
    """Best of 5 repeats, µs per call: the cost without interference."""
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def micro_timings(secret: str, token: str) -> JsonDict:
    """In-process costs of the pieces our interceptor runs per call."""
    import os  # noqa: PLC0415  - local: only these timings need it

    from agentmesh.core import context  # noqa: PLC0415
    from agentmesh.core.interceptors import _VALID_REQUEST_ID  # noqa: PLC0415
    from agentmesh.core.metrics import MethodMetrics  # noqa: PLC0415

    auth = Authenticator(hs256_secret=secret)
    header = f"Bearer {token}"
    auth.authenticate(header)  # fill the cache, as the first call does
    metrics = MethodMetrics("unary", "agentmesh.v1.AgentService", "BenchMicro")
    request_id = "bench-core-direct-grpc-ours"

    def metrics_call() -> None:
        metrics.started()
        metrics.handled("OK", 0.0001)

    return {
        **_otel_micro_timings(),
        "authenticate_cached_token_us": round(_us_per_call(lambda: auth.authenticate(header)), 2),
        "authenticate_uncached_token_us": round(
            _us_per_call(lambda: Authenticator(hs256_secret=secret).authenticate(header), 2000), 2
        ),
        "metrics_started_and_handled_us": round(_us_per_call(metrics_call), 2),
        "bind_call_us": round(
            _us_per_call(lambda: context.bind_call(request_id, tenant="t", subject="s")), 2
        ),
        "request_id_check_us": round(
            _us_per_call(lambda: _VALID_REQUEST_ID.fullmatch(request_id)), 2
        ),
        "request_id_generate_us": round(_us_per_call(lambda: os.urandom(16).hex()), 2),
    }


class _CallDetails:
    """Stands in for grpc.aio's C-level handler call details (not a grpc.HandlerCallDetails,
    which is what makes the OpenTelemetry filters slow: every isinstance check misses)."""

    __slots__ = ("invocation_metadata", "method")

    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata: tuple[tuple[str, str], ...] = ()


def _otel_micro_timings() -> JsonDict:
    """What the OpenTelemetry aio server interceptor does per call, piece by piece."""
    from opentelemetry import propagate, trace  # noqa: PLC0415
    from opentelemetry.instrumentation.grpc import (  # noqa: PLC0415
        aio_server_interceptor,
        filters,
    )
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415

    # The filter the replaced interceptor was configured with (health and reflection out).
    untraced = filters.any_of(filters.health_check(), filters.service_prefix("grpc.reflection."))
    interceptor = aio_server_interceptor(filter_=filters.negate(untraced))
    call_filter: Callable[[Any], bool] = getattr(interceptor, "_filter")  # noqa: B009
    details = _CallDetails("/agentmesh.v1.AgentService/GetAgent")
    tracer = TracerProvider().get_tracer("agentmesh.bench")
    # The attributes the interceptor sets on every server span (semconv 1.x names).
    attributes: dict[str, str | int] = {
        "rpc.system": "grpc",
        "rpc.grpc.status_code": 0,
        "rpc.method": "GetAgent",
        "rpc.service": "agentmesh.v1.AgentService",
        "net.peer.ip": "127.0.0.1",
        "net.peer.port": "50000",
        "net.peer.name": "localhost",
    }
    per_method = {k: attributes[k] for k in ("rpc.system", "rpc.method", "rpc.service")}

    def full_span() -> None:
        with tracer.start_as_current_span(
            details.method,
            kind=trace.SpanKind.SERVER,
            attributes=attributes,
            set_status_on_exception=False,
        ):
            pass

    def lean_span() -> None:
        span = tracer.start_span(details.method, kind=trace.SpanKind.SERVER, attributes=per_method)
        span.end()

    return {
        "otel_filter_us": round(_us_per_call(lambda: call_filter(details)), 2),
        "otel_extract_empty_us": round(_us_per_call(lambda: propagate.extract({})), 2),
        "otel_start_as_current_span_7_attrs_us": round(_us_per_call(full_span), 2),
        "otel_start_span_end_3_attrs_us": round(_us_per_call(lean_span), 2),
    }


def render(result: JsonDict) -> str:
    machine: dict[str, Any] = result.get("machine", {})
    variants = result["variants"]
    lines = [
        "## Core layers: per-call cost of each layer of ours",
        "",
        f"Run {machine.get('date', '?')} with `{result.get('command', '?')}`. Direct gRPC, "
        f"{result['method']['in_flight']} in flight, {result['method']['rounds']} "
        "interleaved rounds; medians. *Server CPU µs/req* is the server process's user+system "
        "time per request: at this load the one-threaded grpc.aio server is the bottleneck, "
        "so it sets the throughput, and the difference between two variants is the cost of "
        "the layer between them.",
        "",
        "| server | req/s | server CPU µs/req | p50 ms |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, v in variants.items():
        lines.append(
            f"| `{name}` | {v['rps']:,.0f} | {v['server_cpu_us']:.0f} | {v['p50_us'] / 1000:.2f} |"
        )
    lines += [
        "",
        "| layer | compared | + server CPU µs/call | req/s ratio |",
        "| --- | --- | ---: | ---: |",
    ]
    for layer in result["layers"]:
        lines.append(
            f"| {layer['layer']} | `{layer['with']}` vs `{layer['without']}` "
            f"| {layer['server_cpu_us_per_call']:+.0f} | {layer['rps_ratio']:.2f} |"
        )
    micro = result.get("micro", {})
    if micro:
        lines += [
            "",
            "In-process micro-timings (best of 5, µs per call): "
            + ", ".join(_micro_label(k, v) for k, v in micro.items())
            + ".",
        ]
    if result.get("problems"):
        lines += ["", "**Correctness problems:** " + "; ".join(result["problems"])]
    lines += [
        "",
        "Variants are `python -m agentmesh.bench.echo_server --variant …` (see its docstring); "
        "`agent` is `python -m agentmesh.agent`. CPU is read in 10 ms ticks over runs of "
        "several thousand requests; differences under ~10 µs are noise.",
    ]
    return "\n".join(lines)


def _micro_label(key: str, value: float) -> str:
    return f"{key.removesuffix('_us').replace('_', ' ')} {value:.2f}"


BENCH: Final = Bench(
    name="core-layers",
    title="per-layer cost of our server chain",
    run=run,
    render=render,
)
