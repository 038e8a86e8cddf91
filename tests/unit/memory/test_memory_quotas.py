"""The storage quota rule: a write is admitted while usage plus what it adds fits."""

from __future__ import annotations

import grpc
import pytest

from agentmesh.memory.domain.quotas import Quota, QuotaExceededError, Usage, admit


def test_a_write_that_fits_is_admitted() -> None:
    admit("memories", Usage(rows=9, bytes=900), Quota(rows=10, bytes=1000), rows=1, size=100)


@pytest.mark.parametrize(
    ("usage", "rows", "size", "unit"),
    [
        (Usage(10, 0), 1, 0, "rows"),  # at the row quota
        (Usage(9, 0), 2, 0, "rows"),  # a batch that would cross it
        (Usage(0, 1000), 1, 1, "bytes"),
        (Usage(0, 0), 1, 1001, "bytes"),  # one write larger than the whole quota
    ],
)
def test_a_write_over_a_quota_is_refused_with_quota_failure(
    usage: Usage, rows: int, size: int, unit: str
) -> None:
    with pytest.raises(QuotaExceededError) as raised:
        admit("memories", usage, Quota(rows=10, bytes=1000), rows=rows, size=size)
    error = raised.value
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == "TENANT_QUOTA_EXCEEDED"
    (detail,) = error.details()
    (violation,) = detail.violations  # type: ignore[attr-defined]
    assert violation.quota_metric == f"agentmesh.dev/memory_memories_{unit}"
    assert violation.quota_value == (10 if unit == "rows" else 1000)


def test_no_limit_and_nothing_added_are_always_admitted() -> None:
    admit("sessions", Usage(10**9, 10**12), Quota(rows=0, bytes=0), rows=5, size=5)
    # At its quota a tenant can still write what adds nothing of that unit.
    admit("checkpoints", Usage(10, 1000), Quota(rows=10, bytes=0), rows=0, size=100)


def test_unlimited_means_both_units_zero() -> None:
    assert Quota(0, 0).unlimited
    assert not Quota(0, 1).unlimited
