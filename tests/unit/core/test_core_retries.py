"""Which methods the mesh retries comes from the contract's ``idempotency_level`` and
``request_id`` fields; the backoff between attempts is gRPC's."""

from __future__ import annotations

import json

import pytest

from agentmesh.core import retries
from agentmesh.core.retries import (
    MAX_ATTEMPTS,
    RETRY_POLICY,
    backoff_s,
    idempotent_methods,
    keyed_methods,
    route,
    service_config,
)

pytestmark = pytest.mark.unit

MEMORY = "agentmesh.v1.MemoryService"
JOB = "agentmesh.v1.JobService"
AGENT = "agentmesh.v1.AgentService"
CONDUCTOR = "agentmesh.v1.ConductorService"


def test_reads_and_idempotent_writes_come_from_the_contract() -> None:
    methods = set(idempotent_methods())
    assert {
        (AGENT, "ListAgents"),
        (AGENT, "GetAgent"),
        (JOB, "GetJob"),
        (JOB, "CancelJob"),
        (MEMORY, "GetSession"),
        (MEMORY, "SearchMemories"),
        (MEMORY, "DeleteSession"),
        (MEMORY, "PutCheckpoint"),
    } <= methods
    # Side effects that a repeat would double, and streams (they resume by sequence).
    assert not methods & {
        (AGENT, "InvokeAgent"),
        (AGENT, "StreamAgent"),
        (JOB, "RetryJob"),
        (JOB, "ResumeJob"),
        (JOB, "WatchJob"),
        (MEMORY, "UpdateSession"),
        (MEMORY, "AppendMessages"),
        (CONDUCTOR, "WatchConversation"),
    }


def test_every_listed_method_exists_and_is_unary() -> None:
    by_name = {service.full_name: service for service in retries.SERVICES}
    for service, name in idempotent_methods() + keyed_methods():
        method = by_name[service].methods_by_name[name]
        assert not method.client_streaming, name
        assert not method.server_streaming, name


def test_keyed_creates_are_the_unary_methods_with_a_request_id() -> None:
    keyed = set(keyed_methods())
    assert {
        (JOB, "CreateJob"),
        (MEMORY, "CreateSession"),
        (MEMORY, "AppendMessages"),
        (MEMORY, "CreateMemory"),
        (MEMORY, "ImportMemories"),
    } <= keyed
    assert (CONDUCTOR, "Converse") not in keyed  # a stream
    assert (MEMORY, "UpdateSession") not in keyed  # no request_id
    assert not keyed & set(idempotent_methods())


def test_route_is_the_http2_path() -> None:
    assert route((JOB, "GetJob")) == "/agentmesh.v1.JobService/GetJob"


def test_service_config_carries_the_one_policy() -> None:
    config = json.loads(service_config([(JOB, "GetJob")]))
    assert config == {
        "methodConfig": [
            {"name": [{"service": JOB, "method": "GetJob"}], "retryPolicy": RETRY_POLICY}
        ]
    }
    assert RETRY_POLICY["maxAttempts"] == MAX_ATTEMPTS


def test_backoff_grows_by_the_multiplier_up_to_the_maximum() -> None:
    # The upper bound of the uniform draw, retry by retry: 0.1 s doubling, capped at 2 s.
    ceilings = [backoff_s(n, uniform=lambda low, high: high) for n in range(1, 8)]
    assert ceilings == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])
    assert backoff_s(3, uniform=lambda low, high: low) == 0.0


def test_backoff_is_jittered_within_its_bound() -> None:
    draws = {backoff_s(2) for _ in range(50)}
    assert all(0.0 <= d <= 0.2 for d in draws)
    assert len(draws) > 1


def test_retries_are_numbered_from_one() -> None:
    with pytest.raises(ValueError, match="numbered from 1"):
        backoff_s(0)
