"""Part 1, rpc: GetSession and AppendMessages with h2load beside the raw echo, checked."""

from __future__ import annotations

import json
import math
import statistics
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import grpc
from google.protobuf import json_format

from agentmesh.bench import core, h2load
from agentmesh.bench.memory.clients import sync_stub
from agentmesh.bench.memory.stack import Stack, children_cpu_s
from agentmesh.bench.procs import BenchError, grpc_frame, grpc_metadata, handled_ok, proc_cpu_s
from agentmesh.bench.suite import BenchOptions, JsonDict
from agentmesh.devstack._proc import wait_until
from agentmesh.memory.app import SERVICE_NAME as MEMORY_SERVICE
from agentmesh.v1 import common_pb2, memory_pb2

GET_SESSION_ID: Final = "bench-get"
APPEND_SESSION_ID: Final = "bench-append"


@dataclass(frozen=True)
class Op:
    """One measured Memory RPC as h2load sends it, over gRPC and as JSON."""

    key: str
    method: str
    grpc_body: bytes
    json_path: str
    json_body: bytes | None
    """None: GET; else POST with this JSON body."""


def _ops() -> tuple[Op, ...]:
    get = memory_pb2.GetSessionRequest(name=f"sessions/{GET_SESSION_ID}")
    create = _create_request()
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
        Op(
            key="create-session",
            method="CreateSession",
            grpc_body=grpc_frame(create.SerializeToString()),
            json_path="/v1/sessions",
            json_body=json.dumps(
                json_format.MessageToDict(create.session), separators=(",", ":")
            ).encode(),
        ),
    )


def _create_request() -> memory_pb2.CreateSessionRequest:
    """A session with a display name and one label, its id generated: every call
    creates a new one."""
    return memory_pb2.CreateSessionRequest(
        session=memory_pb2.Session(display_name="Support chat", labels={"channel": "web"})
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


def _create_sessions(address: str, token: str) -> memory_pb2.Session:
    """The session GetSession reads (realistic labels and metadata) and the one appends
    go to; returns the first as stored."""
    channel, stub = sync_stub(address)
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
    channel, stub = sync_stub(address)
    with channel:
        got: memory_pb2.Session = stub.GetSession(
            memory_pb2.GetSessionRequest(name=f"sessions/{session_id}"),
            metadata=grpc_metadata(token, "bench-memory-check"),
            timeout=10.0,
        )
    return got


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
        channel, stub = sync_stub(address)
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
                if op.method == "CreateSession":
                    made = stub.CreateSession(_create_request(), metadata=md, timeout=5.0)
                    return bytes(made.SerializeToString())
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
    elif op.method == "CreateSession":
        made = memory_pb2.Session.FromString(raw)
        if not made.name.startswith("sessions/") or made.display_name != "Support chat":
            raise BenchError(f"CreateSession via {address} returned {made}")
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

    # No proxy: an http_proxy in the developer's environment must not catch loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def attempt() -> bytes | None:
        request = urllib.request.Request(url, data=op.json_body, headers=headers)
        try:
            with opener.open(request, timeout=5.0) as resp:
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
    elif op.method == "CreateSession":
        if not str(doc.get("name", "")).startswith("sessions/"):
            raise BenchError(f"POST {url} returned an unexpected body: {body[:300]!r}")
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
    cpu0 = (proc_cpu_s(stack.memory.pid), proc_cpu_s(envoy_pid), children_cpu_s(pg_pid))
    result = h2load.run(load)
    cpu1 = (proc_cpu_s(stack.memory.pid), proc_cpu_s(envoy_pid), children_cpu_s(pg_pid))
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
