"""Starting, checking and accounting the processes a bench measures.

Reuses the dev stack's plumbing: `ChildProcess` (own session, stopped by PID with a
bounded SIGTERM → SIGKILL), `check_health`, `StackPorts.free()`, and the real Envoy config
rendered by `dev_values` + `render_envoy_config` and run by `EnvoyProxy`.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import grpc
from prometheus_client.parser import text_string_to_metric_families

from agentmesh.agent.app import SERVICE_NAME
from agentmesh.bench.echo_server import echo_agent
from agentmesh.devstack import paths
from agentmesh.devstack._proc import ChildProcess, wait_until
from agentmesh.devstack.env import child_env
from agentmesh.devstack.envoy_config import SERVICE_NAMES, dev_values, render_envoy_config
from agentmesh.devstack.envoy_process import EnvoyProxy
from agentmesh.devstack.stack import StackPorts, check_health
from agentmesh.v1 import agent_pb2, agent_pb2_grpc

GET_AGENT_PATH: Final = f"/{SERVICE_NAME}/GetAgent"
ECHO_NAME: Final = "agents/echo"
JSON_PATH: Final = "/v1/agents/echo"
_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
_NO_PROXY: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class BenchError(RuntimeError):
    """A process did not start, or a correctness check failed."""


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: 0 (uncompressed), 4-byte big-endian length, bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def request_frame() -> bytes:
    return grpc_frame(agent_pb2.GetAgentRequest(name=ECHO_NAME).SerializeToString())


def proc_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process (all its threads), 0 if unknown."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    # Fields 14 and 15 (utime, stime) are at 11 and 12 after the command name.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def start_echo_server(variant: str, port: int, secret: str, work_dir: Path) -> ChildProcess:
    name = f"echo-{variant.replace('+', '-')}"
    argv = [sys.executable, "-m", "agentmesh.bench.echo_server", "--variant", variant]
    # "--secret=<value>": a token_urlsafe secret may start with "-", which argparse
    # would take for an option when given as a separate argument.
    argv += ["--port", str(port), f"--secret={secret}"]
    child = ChildProcess(name, argv, log_path=work_dir / f"{name}.log", env=bench_env({}))
    wait_serving(child, f"127.0.0.1:{port}")
    return child


def start_agent(port: int, metrics_port: int, secret: str, work_dir: Path) -> ChildProcess:
    """The real Agent service, as `make dev` runs it: `python -m agentmesh.agent`."""
    env = bench_env(
        {
            "AGENTMESH_ENV": "dev",
            "AGENTMESH_GRPC_HOST": "127.0.0.1",
            "AGENTMESH_GRPC_PORT": str(port),
            "AGENTMESH_METRICS_PORT": str(metrics_port),
            "AGENTMESH_AUTH_HS256_SECRET": secret,
            "AGENTMESH_LOG_LEVEL": "info",
            "AGENTMESH_DRAIN_GRACE_S": "1",
        }
    )
    child = ChildProcess(
        "agent",
        [sys.executable, "-m", "agentmesh.agent"],
        log_path=work_dir / "agent.log",
        env=env,
    )
    wait_serving(child, f"127.0.0.1:{port}")
    return child


def bench_env(values: Mapping[str, str]) -> dict[str, str]:
    """The environment of a process the bench starts, with these `AGENTMESH_*` values."""
    # No collector in the bench: spans are non-recording (tracing.configure_tracing).
    return child_env(os.environ, values, drop_otlp=True)


def wait_serving(child: ChildProcess, address: str, timeout_s: float = 30.0) -> None:
    def serving() -> bool:
        if child.returncode() is not None:
            raise BenchError(f"{child.name} exited with {child.returncode()}:\n{child.log_tail()}")
        return check_health(address, SERVICE_NAME, timeout_s=0.5) == "SERVING"

    try:
        wait_until(serving, timeout_s=timeout_s, what=f"{child.name} SERVING on {address}")
    except TimeoutError as exc:
        raise BenchError(f"{exc}\n{child.log_tail()}") from exc


def start_envoy(name: str, ports: StackPorts, agent_port: int, work_dir: Path) -> EnvoyProxy:
    """The real Envoy config (same template as dev and k8s) with the agent upstream at
    `agent_port`; the other services' upstreams point at ports nobody listens on."""
    upstream_ports = {svc: ports.grpc_port(svc) for svc in SERVICE_NAMES}
    upstream_ports["agent"] = agent_port
    values = dev_values(
        ports=upstream_ports,
        descriptor_path=paths.descriptor_set(),
        external_port=ports.envoy_external,
        internal_port=ports.envoy_internal,
        admin_port=ports.envoy_admin,
    )
    config = work_dir / f"envoy-{name}.yaml"
    config.write_text(render_envoy_config(values))
    envoy = EnvoyProxy(config, ports.envoy_admin, log_path=work_dir / f"envoy-{name}.log")
    envoy.start()
    return envoy


def grpc_metadata(token: str, request_id: str) -> tuple[tuple[str, str | bytes], ...]:
    return (("authorization", f"Bearer {token}"), ("x-request-id", request_id))


def check_grpc_call(address: str, token: str, request_id: str, timeout_s: float = 15.0) -> None:
    """One real GetAgent with grpcio: status OK and exactly the expected message.

    Retried until `timeout_s`: through Envoy, the first calls fail until its active health
    check has admitted the upstream.
    """
    expected = echo_agent()
    last: list[str] = []

    def attempt() -> bool:
        with grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as ch:
            stub = agent_pb2_grpc.AgentServiceStub(ch)
            try:
                got = stub.GetAgent(
                    agent_pb2.GetAgentRequest(name=ECHO_NAME),
                    metadata=grpc_metadata(token, request_id),
                    timeout=2.0,
                )
            except grpc.RpcError as exc:
                last[:] = [f"{exc.code()}: {exc.details()}"]
                return False
        if got != expected:
            raise BenchError(f"GetAgent via {address} returned a different message: {got}")
        return True

    try:
        wait_until(attempt, timeout_s=timeout_s, interval_s=0.25, what=f"GetAgent OK via {address}")
    except TimeoutError as exc:
        raise BenchError(f"{exc}; last error {last}") from exc


def check_json_call(url: str, token: str, request_id: str, timeout_s: float = 15.0) -> int:
    """One real `GET /v1/agents/echo` through the transcoder; returns the body length."""
    expected = echo_agent()
    last: list[str] = []
    body: list[bytes] = []

    def attempt() -> bool:
        request = urllib.request.Request(
            url, headers={"authorization": f"Bearer {token}", "x-request-id": request_id}
        )
        try:
            with _NO_PROXY.open(request, timeout=2.0) as resp:
                body[:] = [resp.read()]
        except (urllib.error.URLError, OSError) as exc:
            last[:] = [str(exc)]
            return False
        return True

    try:
        wait_until(attempt, timeout_s=timeout_s, interval_s=0.25, what=f"200 from {url}")
    except TimeoutError as exc:
        raise BenchError(f"{exc}; last error {last}") from exc
    doc = json.loads(body[0])
    if doc.get("name") != ECHO_NAME or doc.get("displayName") != expected.display_name:
        raise BenchError(f"GET {url} returned an unexpected body: {body[0][:300]!r}")
    return len(body[0])


def handled_ok(metrics_port: int, method: str = "GetAgent") -> float:
    """`grpc_server_handled_total{grpc_method=method, grpc_code="OK"}` from /metrics."""
    with _NO_PROXY.open(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5.0) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name != "grpc_server_handled":
            continue
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name.endswith("_total")
                and labels.get("grpc_method") == method
                and labels.get("grpc_code") == "OK"
            ):
                return float(sample.value)
    return 0.0


def stop_all(stoppers: Sequence[tuple[str, object]]) -> list[str]:
    """Stop every process (EnvoyProxy or ChildProcess) in order; returns the errors."""
    errors: list[str] = []
    for name, proc in stoppers:
        try:
            if isinstance(proc, EnvoyProxy):
                proc.stop()
            elif isinstance(proc, ChildProcess):
                proc.stop(timeout_s=10.0)
        except Exception as exc:  # keep stopping the rest
            errors.append(f"{name}: {exc}")
    return errors
