"""Retry policies: defaults, bounds as field violations, backoff, transient failures."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2

from agentmesh.core.validation import Violations
from agentmesh.job.domain.policy import Policy, is_transient, read_policy
from agentmesh.v1 import job_pb2


def _read(policy: job_pb2.RetryPolicy) -> tuple[Policy, list[str]]:
    violations = Violations()
    read = read_policy(policy, violations)
    return read, [field for field, _ in violations.items]


def test_an_empty_policy_gets_the_defaults() -> None:
    policy, problems = _read(job_pb2.RetryPolicy())
    assert policy == Policy(3, 1.0, 300.0, 2.0)
    assert problems == []
    wire = policy.as_proto()
    assert (wire.max_attempts, wire.initial_backoff.seconds, wire.max_backoff.seconds) == (
        3,
        1,
        300,
    )


def test_a_zero_backoff_is_kept() -> None:
    policy, problems = _read(
        job_pb2.RetryPolicy(max_attempts=1, initial_backoff=duration_pb2.Duration())
    )
    assert (policy.max_attempts, policy.initial_backoff_s) == (1, 0.0)
    assert problems == []


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        (job_pb2.RetryPolicy(max_attempts=11), "job.retry_policy.max_attempts"),
        (job_pb2.RetryPolicy(max_attempts=-1), "job.retry_policy.max_attempts"),
        (
            job_pb2.RetryPolicy(initial_backoff=duration_pb2.Duration(seconds=-1)),
            "job.retry_policy.initial_backoff",
        ),
        (
            job_pb2.RetryPolicy(max_backoff=duration_pb2.Duration(seconds=10**9)),
            "job.retry_policy.max_backoff",
        ),
        (
            job_pb2.RetryPolicy(max_backoff=duration_pb2.Duration(nanos=5, seconds=-1)),
            "job.retry_policy.max_backoff",
        ),
        (
            job_pb2.RetryPolicy(
                initial_backoff=duration_pb2.Duration(seconds=20),
                max_backoff=duration_pb2.Duration(seconds=10),
            ),
            "job.retry_policy.max_backoff",
        ),
        (job_pb2.RetryPolicy(backoff_multiplier=0.5), "job.retry_policy.backoff_multiplier"),
        (
            job_pb2.RetryPolicy(backoff_multiplier=float("nan")),
            "job.retry_policy.backoff_multiplier",
        ),
        (job_pb2.RetryPolicy(backoff_multiplier=11), "job.retry_policy.backoff_multiplier"),
    ],
)
def test_bad_values_are_field_violations(policy: job_pb2.RetryPolicy, field: str) -> None:
    _, problems = _read(policy)
    assert problems == [field]


def test_backoff_grows_to_its_ceiling_with_bounded_jitter() -> None:
    policy = Policy(max_attempts=10, initial_backoff_s=1.0, max_backoff_s=10.0, multiplier=2.0)
    assert [policy.backoff_s(a, jitter=0.0) for a in (1, 2, 3, 4, 5, 6)] == [1, 2, 4, 8, 10, 10]
    assert policy.backoff_s(1, jitter=0.999) == pytest.approx(0.8, abs=0.001)
    assert all(0.8 <= policy.backoff_s(2) <= 2.0 for _ in range(200))
    # A huge attempt number neither overflows nor passes the ceiling.
    assert policy.backoff_s(10**6, jitter=0.0) == 10.0


def test_transient_failures() -> None:
    for code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
    ):
        assert is_transient(code)
    for code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    ):
        assert not is_transient(code)
