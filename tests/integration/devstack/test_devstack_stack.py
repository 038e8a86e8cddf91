"""DevStack with stand-in services: comes up healthy through Envoy, stops without leftovers.

The services are the STAND-IN in standin_service.py (health only): these tests check the
launcher (order, wiring, health waits, local-reply JSON at the edge, teardown), not the
services themselves.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

from agentmesh.devstack._proc import pid_alive, port_is_listening, wait_until
from agentmesh.devstack.envoy_config import SERVICE_NAMES
from agentmesh.devstack.stack import SERVICES, WORKER, DevStack, StackError, StackPorts

pytestmark = pytest.mark.integration

STANDIN = Path(__file__).with_name("standin_service.py")


def standin_commands() -> dict[str, list[str]]:
    commands = {svc: [sys.executable, str(STANDIN), SERVICE_NAMES[svc]] for svc in SERVICES}
    commands[WORKER] = [sys.executable, str(STANDIN)]
    return commands


def _raw(data: bytes) -> bytes:
    return data


def _gone(pid: int) -> Callable[[], bool]:
    return lambda: not pid_alive(pid)


def rest_get_path(descriptor_set: Path) -> str:
    """A parameterless GET binding from the real API (e.g. ListAgents)."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    for file in fds.file:
        for service in file.service:
            for method in service.method:
                # The stubs type extension handles generically; at run time this is HttpRule.
                rule: http_pb2.HttpRule = method.options.Extensions[annotations_pb2.http]  # type: ignore[index]
                if rule.get and "{" not in rule.get:
                    return str(rule.get)
    raise AssertionError("no parameterless GET binding in the descriptor set")


@pytest.fixture(scope="module")
def stack(descriptor_set: Path) -> Iterator[DevStack]:
    # Not under pytest's basetemp: see the pg_root fixture for why.
    root = Path(tempfile.mkdtemp(prefix="agentmesh-test-stack-"))
    dev = DevStack(
        root,
        StackPorts.free(),
        commands=standin_commands(),
        descriptor_set=descriptor_set,
        redis_appendonly=False,
    )
    dev.start()
    try:
        yield dev
    finally:
        dev.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_every_service_is_serving_directly_and_through_envoy(stack: DevStack) -> None:
    for svc in SERVICES:
        assert stack.health(svc) == "SERVING"
        assert stack.health(svc, via_envoy=True) == "SERVING"
    assert set(stack.endpoints) == {"envoy", "envoy_internal", "envoy_admin", *SERVICES}
    metrics = httpx.get(f"{stack.endpoints['envoy_admin']}/stats/prometheus", timeout=5.0)
    assert "envoy_cluster_health_check_success" in metrics.text


def test_children_get_the_wiring(stack: DevStack) -> None:
    env = stack.child_env("memory")
    assert env["AGENTMESH_GRPC_PORT"] == str(stack.ports.memory)
    assert env["AGENTMESH_METRICS_PORT"] == str(stack.ports.metrics_memory)
    # Least privilege: Memory connects as its own role, never as the owner the
    # migrations use; a service without tables gets no database at all.
    assert env["AGENTMESH_DATABASE_URL"] == stack.service_database_url("memory")
    assert env["AGENTMESH_DATABASE_URL"].startswith("postgresql://agentmesh_memory@/")
    assert stack.child_env("job")["AGENTMESH_DATABASE_URL"].startswith(
        "postgresql://agentmesh_job@/"
    )
    agent_env = stack.child_env("agent")
    assert agent_env.get("AGENTMESH_DATABASE_URL") == os.environ.get("AGENTMESH_DATABASE_URL")
    assert env["AGENTMESH_REDIS_URL"] == stack.redis_url
    assert env["AGENTMESH_AUTH_HS256_SECRET"] == stack.secret
    for svc in SERVICES:
        assert env[f"AGENTMESH_{svc.upper()}_ADDR"] == stack.internal_address
    assert stack.child_env(WORKER)["AGENTMESH_METRICS_PORT"] == str(stack.ports.metrics_worker)
    assert stat.S_IMODE(stack.secret_path.stat().st_mode) == 0o600
    assert len(stack.secret) >= 32
    assert "serving on" in (stack.logs_dir / "memory.log").read_text()


def test_edge_errors_are_json_status(stack: DevStack, descriptor_set: Path) -> None:
    base = f"http://{stack.endpoints['envoy']}"
    path = rest_get_path(descriptor_set)
    with httpx.Client(base_url=base, timeout=5.0) as client:
        # Upstream error (the stand-in implements no method): the transcoder's JSON.
        upstream = client.get(path)
        assert upstream.status_code == 501
        assert upstream.json()["code"] == 12
        # Envoy's own replies, rewritten by the local-reply mapper.
        unknown_path = client.get("/no/such/path")
        assert unknown_path.status_code == 404
        assert unknown_path.headers["content-type"] == "application/json"
        assert unknown_path.json() == {
            "code": 5,
            "message": unknown_path.json()["message"],
            "details": [],
        }
        unknown_query = client.get(path, params={"no_such_parameter": "1"})
        assert unknown_query.status_code == 400
        assert unknown_query.json()["code"] == 3
        preflight = client.options(
            path,
            headers={"origin": "http://localhost:3000", "access-control-request-method": "GET"},
        )
        assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "x-request-id" in preflight.headers["access-control-expose-headers"]
    # A native gRPC client keeps plain grpc-status/grpc-message (no JSON in them).
    with grpc.insecure_channel(stack.endpoints["envoy"]) as channel:
        call = channel.unary_unary(
            "/no.such.Service/Method", request_serializer=_raw, response_deserializer=_raw
        )
        with pytest.raises(grpc.RpcError) as info:
            call(b"", timeout=5.0)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        details = info.value.details() or ""
        with pytest.raises(json.JSONDecodeError):
            json.loads(details)


def test_postgres_stops_and_starts_within_the_stack(stack: DevStack) -> None:
    stack.stop_postgres()
    assert not stack.postgres.running
    stack.start_postgres()
    assert stack.postgres.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'memory'") == "1"


def test_stop_leaves_no_ports_and_no_processes(tmp_path: Path, descriptor_set: Path) -> None:
    ports = StackPorts.free()
    dev = DevStack(tmp_path, ports, commands=standin_commands(), descriptor_set=descriptor_set)
    dev.start()
    pids = [child.pid for child in dev.children.values()]
    pids += [pid for pid in (dev.envoy.pid, dev.redis.pid, dev.postgres.pid) if pid is not None]
    assert len(pids) == len(SERVICES) + 1 + 3
    dev.stop()
    for pid in pids:
        wait_until(_gone(pid), timeout_s=5.0, what=f"PID {pid} gone")
    listening = [port for port in ports.as_dict().values() if port_is_listening(port)]
    assert listening == []
    ss = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True, check=True).stdout
    for pid in pids:
        assert f"pid={pid}," not in ss


def test_a_service_that_dies_fails_start_with_its_log(pg_root: Path, descriptor_set: Path) -> None:
    commands = standin_commands()
    commands["job"] = [sys.executable, "-c", "import sys; print('job boom'); sys.exit(3)"]
    ports = StackPorts.free()
    dev = DevStack(pg_root, ports, commands=commands, descriptor_set=descriptor_set)
    with pytest.raises(StackError, match=r"job exited with status 3(.|\n)*job boom"):
        dev.start()
    assert [p for p in ports.as_dict().values() if port_is_listening(p)] == []
    assert not dev.postgres.running
