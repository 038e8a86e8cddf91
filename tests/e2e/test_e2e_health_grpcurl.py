"""grpcurl reaches every service's health through Envoy's internal listener.

Envoy routes `grpc.health.v1.Health` only (no reflection), so grpcurl needs the
descriptor set: `gen/descriptors/agentmesh.binpb` includes the health proto for that
(docs/operations.md shows the same commands).
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from agentmesh.core.server import LIVENESS
from agentmesh.devstack import paths
from agentmesh.devstack._proc import find_executable
from agentmesh.devstack.envoy_config import HEALTH_ROUTE_HEADER, SERVICE_NAMES
from agentmesh.devstack.stack import DevStack


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(find_executable("grpcurl")),
            "-plaintext",
            "-protoset",
            str(paths.descriptor_set()),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_descriptor_set_alone_describes_health() -> None:
    # No server involved: grpcurl reads the services from the protoset.
    listed = grpcurl("list")
    assert listed.returncode == 0, listed.stderr
    assert "grpc.health.v1.Health" in listed.stdout.split()
    described = grpcurl("describe", "grpc.health.v1.Health")
    assert described.returncode == 0, described.stderr
    assert "rpc Check ( .grpc.health.v1.HealthCheckRequest )" in described.stdout


@pytest.mark.parametrize("service", list(SERVICE_NAMES))
@pytest.mark.parametrize("name", ["readiness", "liveness"])
def test_health_check_through_envoy_with_the_descriptor_set(
    stack: DevStack, service: str, name: str
) -> None:
    health_name = SERVICE_NAMES[service] if name == "readiness" else LIVENESS
    # Envoy routes only to replicas its own health checks found SERVING: right after a
    # test that stopped PostgreSQL, Memory and Job may still be out of its rotation for
    # a check interval or two ("no healthy upstream"). Wait for that, bounded.
    deadline = time.monotonic() + 30
    while True:
        result = grpcurl(
            "-H",
            f"{HEALTH_ROUTE_HEADER}: {service}",
            "-d",
            json.dumps({"service": health_name}),
            stack.internal_address,
            "grpc.health.v1.Health/Check",
        )
        if "no healthy upstream" not in result.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": "SERVING"}


def test_unknown_health_name_is_not_found_through_envoy(stack: DevStack) -> None:
    result = grpcurl(
        "-H",
        f"{HEALTH_ROUTE_HEADER}: agent",
        "-d",
        json.dumps({"service": "no.such.Service"}),
        stack.internal_address,
        "grpc.health.v1.Health/Check",
    )
    assert result.returncode != 0
    assert "Code: NotFound" in result.stderr, result.stderr
