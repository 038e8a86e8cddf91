"""With the mesh up: every service found by reflection and SERVING, direct and via Envoy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agentmesh.devstack.stack import SERVICES, DevStack

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
FULL_NAMES = {
    "conductor": "agentmesh.v1.ConductorService",
    "agent": "agentmesh.v1.AgentService",
    "job": "agentmesh.v1.JobService",
    "memory": "agentmesh.v1.MemoryService",
}


def _grpcurl(*args: str) -> str:
    done = subprocess.run(
        [GRPCURL, "-plaintext", "-max-time", "10", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, f"grpcurl {' '.join(args)} failed: {done.stderr}"
    return done.stdout


def test_grpcurl_lists_all_four_services_through_reflection(stack: DevStack) -> None:
    listed: set[str] = set()
    for service in SERVICES:
        names = set(_grpcurl(stack.endpoints[service], "list").split())
        assert FULL_NAMES[service] in names
        assert {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
        listed |= names
    assert set(FULL_NAMES.values()) <= listed


@pytest.mark.parametrize("service", SERVICES)
def test_grpcurl_sees_health_serving(stack: DevStack, service: str) -> None:
    out = _grpcurl(
        "-d",
        json.dumps({"service": FULL_NAMES[service]}),
        stack.endpoints[service],
        "grpc.health.v1.Health/Check",
    )
    assert json.loads(out) == {"status": "SERVING"}


@pytest.mark.parametrize("service", SERVICES)
def test_health_serving_through_envoy_internal_listener(stack: DevStack, service: str) -> None:
    assert stack.health(service, via_envoy=True) == "SERVING"


def test_grpcurl_describes_the_service_contract(stack: DevStack) -> None:
    out = _grpcurl(stack.endpoints["agent"], "describe", "agentmesh.v1.AgentService")
    assert "rpc GetAgent ( .agentmesh.v1.GetAgentRequest ) returns ( .agentmesh.v1.Agent )" in out
    assert "returns ( stream .agentmesh.v1.AgentEvent )" in out
