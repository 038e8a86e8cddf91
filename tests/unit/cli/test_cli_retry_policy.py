"""The CLI retries what the services retry, the way they do (it keeps its own copy of
the policy so that it need not import the services' channel module)."""

from __future__ import annotations

import json

from agentmesh.cli.mesh import RETRIED_METHODS, service_config
from agentmesh.core import channels


def test_the_cli_uses_the_mesh_retry_policy() -> None:
    assert json.loads(service_config()) == json.loads(channels.service_config(RETRIED_METHODS))


def test_only_reads_idempotent_writes_and_keyed_creates_are_retried() -> None:
    methods = {method for _, method in RETRIED_METHODS}
    assert not methods & {"RetryJob", "WatchJob", "ResumeJob"}
    assert {"GetJob", "ListJobs", "CancelJob", "CreateJob", "SearchMemories"} <= methods
