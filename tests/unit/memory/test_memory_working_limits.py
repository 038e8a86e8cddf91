"""Working memory limits: requests no working memory could take, and the quota error."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from agentmesh.core.validation import Violations
from agentmesh.memory.domain.working import WorkingMemoryLimitError, check_limits

pytestmark = pytest.mark.unit


def problems(pairs: list[str], remove: list[str], *, max_keys: int, max_bytes: int) -> list[str]:
    violations = Violations()
    check_limits(pairs, remove, violations, max_keys=max_keys, max_bytes=max_bytes)
    assert {field for field, _ in violations.items} <= {"working_memory.values"}
    return [why for _, why in violations.items]


def test_a_request_within_the_limits_passes() -> None:
    assert problems(["a", "1", "b", "22"], [], max_keys=2, max_bytes=5) == []


def test_too_many_keys_by_itself_is_invalid() -> None:
    assert problems(["a", "1", "b", "2", "c", "3"], [], max_keys=2, max_bytes=100) == [
        "3 keys; a working memory holds at most 2"
    ]


def test_size_counts_key_and_json_bytes() -> None:
    # "é" is two bytes: 2 + 1 + 1 + 4 = 8.
    assert problems(["é", "1", "b", '"é"'], [], max_keys=10, max_bytes=5) == [
        "8 bytes of keys and JSON values; a working memory holds at most 5"
    ]


def test_keys_the_request_removes_again_do_not_count() -> None:
    assert problems(["a", "1", "b", "2", "c", "3"], ["c", "x"], max_keys=2, max_bytes=4) == []


def test_both_limits_are_reported_together() -> None:
    assert len(problems(["a", "11", "b", "22"], [], max_keys=1, max_bytes=3)) == 2


def test_the_limit_error_is_a_quota_failure_that_says_how_far_the_merge_goes() -> None:
    name = "sessions/trip/workingMemory"
    error = WorkingMemoryLimitError(name, "bytes", 1200, 1000)
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == "WORKING_MEMORY_LIMIT_EXCEEDED"
    assert error.metadata == {
        "resource_name": name,
        "limit_name": "bytes",
        "limit": "1000",
        "projected": "1200",
    }
    (details,) = error.details()
    assert isinstance(details, error_details_pb2.QuotaFailure)
    (violation,) = details.violations
    assert violation.quota_id == "WorkingMemoryBytesPerSession"
    assert violation.quota_value == 1000
    assert violation.description == "1200 bytes after the update; at most 1000 per working memory"
