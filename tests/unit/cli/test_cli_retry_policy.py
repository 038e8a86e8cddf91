"""The CLI retries what the contract declares safe to repeat, with the mesh's one policy
(``core.retries``; not ``core.channels``, which would slow every start of the command)."""

from __future__ import annotations

import json
import subprocess
import sys

from agentmesh.cli.mesh import RETRIED_METHODS, service_config
from agentmesh.core.retries import RETRY_POLICY, idempotent_methods, keyed_methods


def test_the_cli_retries_the_contracts_idempotent_methods_and_keyed_creates() -> None:
    assert set(RETRIED_METHODS) == set(idempotent_methods()) | set(keyed_methods())
    (config,) = json.loads(service_config())["methodConfig"]
    assert config["retryPolicy"] == RETRY_POLICY
    assert {(n["service"], n["method"]) for n in config["name"]} == set(RETRIED_METHODS)


def test_only_reads_idempotent_writes_and_keyed_creates_are_retried() -> None:
    methods = {method for _, method in RETRIED_METHODS}
    assert not methods & {"RetryJob", "WatchJob", "ResumeJob", "Converse", "InvokeAgent"}
    assert {"GetJob", "ListJobs", "CancelJob", "CreateJob", "SearchMemories"} <= methods


def test_the_command_does_not_load_the_services_channel_module() -> None:
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, agentmesh.cli.mesh; print(' '.join(sorted(sys.modules)))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert "agentmesh.core.retries" in loaded
    assert not {"agentmesh.core.channels", "agentmesh.core.tracing", "redis"} & set(loaded)
