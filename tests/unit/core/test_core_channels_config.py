"""The retry service config covers exactly the methods declared idempotent."""

from __future__ import annotations

import json

import pytest

from agentmesh.core.channels import RETRY_POLICY, service_config

pytestmark = pytest.mark.unit


def test_only_idempotent_methods_get_the_retry_policy() -> None:
    config = json.loads(
        service_config(
            [("agentmesh.v1.MemoryService", "GetSession"), ("agentmesh.v1.AgentService", "")]
        )
    )

    assert config == {
        "methodConfig": [
            {
                "name": [
                    {"service": "agentmesh.v1.MemoryService", "method": "GetSession"},
                    {"service": "agentmesh.v1.AgentService"},
                ],
                "retryPolicy": RETRY_POLICY,
            }
        ]
    }
    assert RETRY_POLICY["maxAttempts"] == 4
    assert RETRY_POLICY["retryableStatusCodes"] == ["UNAVAILABLE"]


def test_no_idempotent_methods_means_no_retries() -> None:
    assert json.loads(service_config([])) == {"methodConfig": []}
