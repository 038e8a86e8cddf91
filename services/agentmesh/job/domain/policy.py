"""Retry policies: the defaults a job's policy gets, the delay before each attempt,
and which failures are worth another attempt."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final, Literal

import grpc

from agentmesh.core.validation import Violations, check_duration
from agentmesh.v1 import job_pb2

MAX_ATTEMPTS: Final = 10
DEFAULT_ATTEMPTS: Final = 3
DEFAULT_INITIAL_BACKOFF_S: Final = 1.0
DEFAULT_MAX_BACKOFF_S: Final = 300.0
DEFAULT_MULTIPLIER: Final = 2.0
MAX_BACKOFF_S: Final = 3600.0
"""Longest delay a policy may ask for between two attempts."""
MAX_MULTIPLIER: Final = 10.0

TRANSIENT: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)
"""Failures another attempt may fix: outages, timeouts, rate limits, crashes. The
others (a bad input, a missing agent or thread, a refused precondition, a denied
call) fail the same way every time, so the job fails at once."""


@dataclass(frozen=True)
class Policy:
    """A job's retry policy with every default filled in."""

    max_attempts: int = DEFAULT_ATTEMPTS
    initial_backoff_s: float = DEFAULT_INITIAL_BACKOFF_S
    max_backoff_s: float = DEFAULT_MAX_BACKOFF_S
    multiplier: float = DEFAULT_MULTIPLIER

    def backoff_s(self, attempt: int, *, jitter: float | None = None) -> float:
        """The delay before attempt ``attempt + 1`` after attempt ``attempt`` failed:
        ``initial × multiplier^(attempt-1)``, at most ``max_backoff``, less up to 20 %
        of jitter (``jitter`` in [0, 1) fixes it; random otherwise) so that jobs that
        failed together do not come back together."""
        base = min(
            self.max_backoff_s,
            self.initial_backoff_s * self.multiplier ** max(0, min(attempt - 1, 60)),
        )
        share = random.random() if jitter is None else jitter  # not security
        return base * (1 - 0.2 * share)

    def as_proto(self) -> job_pb2.RetryPolicy:
        """The policy as the wire shows it (every default filled in)."""
        policy = job_pb2.RetryPolicy(
            max_attempts=self.max_attempts, backoff_multiplier=self.multiplier
        )
        policy.initial_backoff.FromMilliseconds(round(self.initial_backoff_s * 1000))
        policy.max_backoff.FromMilliseconds(round(self.max_backoff_s * 1000))
        return policy


def read_policy(
    policy: job_pb2.RetryPolicy, violations: Violations, *, field: str = "job.retry_policy"
) -> Policy:
    """``policy`` with defaults for what it leaves unset; its bad values are added to
    ``violations`` (and the defaults used in their place)."""
    attempts = policy.max_attempts or DEFAULT_ATTEMPTS
    if not 1 <= attempts <= MAX_ATTEMPTS:
        violations.add(f"{field}.max_attempts", f"expected 1-{MAX_ATTEMPTS}, or 0 for 3")
        attempts = DEFAULT_ATTEMPTS
    initial = _duration(policy, "initial_backoff", DEFAULT_INITIAL_BACKOFF_S, violations, field)
    ceiling = _duration(policy, "max_backoff", DEFAULT_MAX_BACKOFF_S, violations, field)
    if ceiling < initial:
        violations.add(f"{field}.max_backoff", "must not be shorter than initial_backoff")
    multiplier = policy.backoff_multiplier or DEFAULT_MULTIPLIER
    if not 1.0 <= multiplier <= MAX_MULTIPLIER:  # also refuses NaN
        violations.add(f"{field}.backoff_multiplier", f"expected 1-{MAX_MULTIPLIER:g}, or 0 for 2")
        multiplier = DEFAULT_MULTIPLIER
    return Policy(attempts, initial, ceiling, multiplier)


def _duration(
    policy: job_pb2.RetryPolicy,
    name: Literal["initial_backoff", "max_backoff"],
    default: float,
    violations: Violations,
    field: str,
) -> float:
    if not policy.HasField(name):
        return default
    value = getattr(policy, name)
    checked = violations.check(
        lambda: check_duration(
            value.seconds, value.nanos, field=f"{field}.{name}", min_s=0.0, max_s=MAX_BACKOFF_S
        )
    )
    return default if checked is None else checked


def is_transient(code: grpc.StatusCode) -> bool:
    """Whether a failure with ``code`` is worth another attempt."""
    return code in TRANSIENT
