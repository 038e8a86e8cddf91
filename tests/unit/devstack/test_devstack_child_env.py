"""`child_env`: the one builder of a child process's environment (dev stack, bench, tests)."""

from __future__ import annotations

import io

import pytest

from agentmesh.devstack.__main__ import envoy_access_line
from agentmesh.devstack._proc import ConsoleEcho
from agentmesh.devstack.env import OTLP_EXPORTER_VARIABLES, child_env

pytestmark = pytest.mark.unit

BASE = {
    "PATH": "/usr/bin",
    "HOME": "/home/dev",
    "AGENTMESH_LOG_LEVEL": "debug",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
    "AGENTMESH_OTLP_ENDPOINT": "http://collector:4317",
}


def test_the_base_is_inherited_unbuffered_and_the_values_win() -> None:
    env = child_env(
        BASE, {"AGENTMESH_LOG_LEVEL": "info", "AGENTMESH_GRPC_PORT": "50054"}, drop_otlp=False
    )

    assert env == {
        **BASE,
        "PYTHONUNBUFFERED": "1",
        "AGENTMESH_LOG_LEVEL": "info",
        "AGENTMESH_GRPC_PORT": "50054",
    }


def test_the_base_is_copied_not_changed() -> None:
    base = dict(BASE)

    env = child_env(base, {"AGENTMESH_ENV": "dev"}, drop_otlp=True)
    env["PATH"] = "/elsewhere"

    assert base == BASE


def test_drop_otlp_removes_only_the_inherited_exporter_variables() -> None:
    kept = child_env(BASE, {}, drop_otlp=False)
    dropped = child_env(BASE, {}, drop_otlp=True)

    assert all(kept[key] == BASE[key] for key in OTLP_EXPORTER_VARIABLES)
    assert not set(OTLP_EXPORTER_VARIABLES) & set(dropped)
    assert dropped == {
        "PATH": "/usr/bin",
        "HOME": "/home/dev",
        "AGENTMESH_LOG_LEVEL": "debug",
        "PYTHONUNBUFFERED": "1",
    }


def test_values_are_set_as_given_even_an_exporter_or_buffering() -> None:
    env = child_env(
        {},
        {"AGENTMESH_OTLP_ENDPOINT": "http://mine:4317", "PYTHONUNBUFFERED": "0"},
        drop_otlp=True,
    )

    assert env == {"AGENTMESH_OTLP_ENDPOINT": "http://mine:4317", "PYTHONUNBUFFERED": "0"}


def test_the_dev_console_mutes_envoys_access_log_only() -> None:
    access = '{"time":"2026-12-02T16:00:00Z","listener":"external","status":"503"}'
    stream = io.StringIO()
    echo = ConsoleEcho(stream, muted=envoy_access_line)
    echo.write_line("envoy", access)
    echo.write_line("envoy", "[info] all clusters initialized")
    echo.write_line("memory", access)  # another process's JSON line stays
    lines = stream.getvalue().splitlines()
    assert lines == [
        "envoy     | [info] all clusters initialized",
        f"memory    | {access}",
    ]
