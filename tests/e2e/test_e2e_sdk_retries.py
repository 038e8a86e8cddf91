"""The SDK's retries against a real outage: Envoy in front of services that are down.

A real Envoy, rendered from the dev template, whose upstreams listen nowhere answers
every call UNAVAILABLE ("no healthy upstream"). Its ``downstream_rq_total`` counter
says how many attempts one SDK call made: the mesh's retry policy for the methods the
contract declares idempotent and for keyed creates (the SDK fills their request_id),
one attempt for the rest. Then a real Agent service comes up on the upstream's port and
the same clients' calls succeed. Nothing is timed: every wait is bounded and polls a
state seen from outside the processes.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from agentmesh.core.retries import MAX_ATTEMPTS
from agentmesh.devstack import paths
from agentmesh.devstack._proc import ChildProcess, wait_port_free
from agentmesh.devstack.envoy_config import SERVICE_NAMES, dev_values, render_envoy_config
from agentmesh.devstack.envoy_process import EnvoyProxy
from agentmesh.devstack.stack import DevStack, check_health
from agentmesh.sdk import (
    CreateSessionRequest,
    GetAgentRequest,
    InvokeAgentRequest,
    Part,
    Session,
    aconnect,
    connect,
)

WAIT_S = 60.0
REQUESTS = "http.external.downstream_rq_total"
"""Calls Envoy's external listener received: one per attempt of the client."""


def free_ports(count: int) -> list[int]:
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_S:.0f} s waiting for {what}")
        time.sleep(0.1)


@dataclass
class Edge:
    root: Path
    envoy: EnvoyProxy
    address: str
    agent_port: int

    def admin(self, path: str) -> str:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{self.envoy.admin_url}{path}", timeout=5.0) as resp:
            return bytes(resp.read()).decode()

    def requests(self) -> int:
        for line in self.admin(f"/stats?filter=^{REQUESTS}$").splitlines():
            key, _, value = line.partition(": ")
            if key == REQUESTS:
                return int(value)
        return 0

    def agent_healthy(self) -> bool:
        flag = f"agent::127.0.0.1:{self.agent_port}::health_flags::healthy"
        return flag in self.admin("/clusters").splitlines()


@pytest.fixture(scope="module")
def edge() -> Iterator[Edge]:
    root = Path(tempfile.mkdtemp(prefix="agentmesh-sdk-retries-"))
    external, internal, admin, *upstreams = free_ports(7)
    ports = dict(zip(("conductor", "agent", "job", "memory"), upstreams, strict=True))
    values = dev_values(
        ports=ports,
        descriptor_path=paths.descriptor_set(),
        external_port=external,
        internal_port=internal,
        admin_port=admin,
    )
    config = root / "envoy.yaml"
    config.write_text(render_envoy_config(values))
    envoy = EnvoyProxy(config, admin, log_path=root / "envoy.log")
    try:
        envoy.start()
        yield Edge(root, envoy, f"127.0.0.1:{external}", ports["agent"])
    finally:
        envoy.stop()
        shutil.rmtree(root, ignore_errors=True)


def get_agent() -> GetAgentRequest:
    return GetAgentRequest(name="agents/echo")  # NO_SIDE_EFFECTS


def invoke_agent() -> InvokeAgentRequest:
    return InvokeAgentRequest(name="agents/echo", parts=[Part(text="once")])  # not idempotent


def create_session() -> CreateSessionRequest:
    return CreateSessionRequest(session=Session())  # keyed: the SDK adds a request_id


def test_the_sync_client_retries_only_what_may_be_repeated(edge: Edge, token: str) -> None:
    with connect(edge.address, token) as mesh:
        calls: list[tuple[Callable[[], Any], int]] = [
            (lambda: mesh.agent.get_agent(get_agent()), MAX_ATTEMPTS),
            (lambda: mesh.memory.create_session(create_session()), MAX_ATTEMPTS),
            (lambda: mesh.agent.invoke_agent(invoke_agent()), 1),
        ]
        for call, attempts in calls:
            before = edge.requests()
            with pytest.raises(grpc.RpcError) as failed:
                call()
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            assert edge.requests() - before == attempts


async def test_the_async_client_retries_only_what_may_be_repeated(edge: Edge, token: str) -> None:
    async with aconnect(edge.address, token) as mesh:
        calls: list[tuple[Callable[[], Any], int]] = [
            (lambda: mesh.agent.get_agent(get_agent()), MAX_ATTEMPTS),
            (lambda: mesh.memory.create_session(create_session()), MAX_ATTEMPTS),
            (lambda: mesh.agent.invoke_agent(invoke_agent()), 1),
        ]
        for call, attempts in calls:
            before = edge.requests()
            with pytest.raises(GRPCError) as failed:
                await call()
            assert failed.value.status == Status.UNAVAILABLE
            assert edge.requests() - before == attempts


async def test_the_async_client_reports_a_refused_connection_as_unavailable(
    edge: Edge, token: str
) -> None:
    # No Envoy in between: the port refuses the connection; every attempt fails alike.
    async with aconnect(f"127.0.0.1:{edge.agent_port}", token) as mesh:
        with pytest.raises(GRPCError) as failed:
            await mesh.agent.get_agent(get_agent())
    assert failed.value.status == Status.UNAVAILABLE


async def test_calls_succeed_once_the_service_is_up(
    edge: Edge, stack: DevStack, token: str
) -> None:
    env = {
        **stack.child_env("agent"),
        "AGENTMESH_GRPC_PORT": str(edge.agent_port),
        "AGENTMESH_METRICS_PORT": "0",
    }
    agent = ChildProcess(
        "agent-sdk", stack.command("agent"), log_path=edge.root / "agent.log", env=env
    )
    try:
        address = f"127.0.0.1:{edge.agent_port}"
        eventually(
            lambda: check_health(address, SERVICE_NAMES["agent"]) == "SERVING",
            f"the agent service on {address}",
        )
        eventually(edge.agent_healthy, "Envoy to see the agent service healthy")
        with connect(edge.address, token) as mesh:
            assert mesh.agent.get_agent(get_agent()).name == "agents/echo"
            ran = mesh.agent.invoke_agent(invoke_agent())
            assert ran.result is not None
            assert [p.text for p in ran.result.parts] == ["once"]
        async with aconnect(edge.address, token) as client:
            assert (await client.agent.get_agent(get_agent())).name == "agents/echo"
    finally:
        agent.stop(timeout_s=15.0)
        wait_port_free(edge.agent_port, timeout_s=10.0)
