"""Soft delete of sessions, the parts that need no database: errors, thread owners."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest
from google.rpc import error_details_pb2

from agentmesh.core.errors import to_rpc_status
from agentmesh.memory.domain.sessions import SessionDeletedError, SessionNotDeletedError
from agentmesh.memory.stores.sessions import thread_session_deleted, thread_session_id

pytestmark = pytest.mark.unit


def test_creating_over_a_deleted_session_says_when_the_id_is_free() -> None:
    error = SessionDeletedError(
        "trip",
        datetime(2026, 11, 24, 22, 0, 3, 88894, tzinfo=UTC),
        datetime(2026, 12, 1, 22, 0, 3, 88894, tzinfo=UTC),
    )
    assert error.code == grpc.StatusCode.ALREADY_EXISTS
    assert error.reason == "SESSION_DELETED"
    assert dict(error.metadata) == {
        "resource_type": "agentmesh.dev/Session",
        "resource_name": "sessions/trip",
        "delete_time": "2026-11-24T22:00:03.088894Z",
        "purge_time": "2026-12-01T22:00:03.088894Z",
    }
    assert error.message == str(error)
    assert "deleted" in error.message
    assert "2026-12-01T22:00:03.088894Z" in error.message
    # The wire status carries the same message and the resource.
    status = to_rpc_status(error, "req-1")
    assert status.code == grpc.StatusCode.ALREADY_EXISTS
    assert status.details == error.message
    assert list(error.details()) == [
        error_details_pb2.ResourceInfo(
            resource_type="agentmesh.dev/Session",
            resource_name="sessions/trip",
            description=error.message,
        )
    ]


def test_undeleting_a_live_session_is_a_plain_already_exists() -> None:
    error = SessionNotDeletedError("agentmesh.dev/Session", "sessions/trip")
    assert error.code == grpc.StatusCode.ALREADY_EXISTS
    assert error.reason == "RESOURCE_ALREADY_EXISTS"
    assert error.message == (
        "agentmesh.dev/Session 'sessions/trip' exists and is not deleted:"
        " there is nothing to undelete"
    )


@pytest.mark.parametrize(
    ("thread_id", "session_id"),
    [("s1", "s1"), ("s1:sub", "s1"), ("s1:sub:deeper", "s1"), ("s1-other", "s1-other")],
)
def test_a_thread_belongs_to_the_session_before_its_first_colon(
    thread_id: str, session_id: str
) -> None:
    assert thread_session_id(thread_id) == session_id


def test_the_thread_condition_uses_the_expression_it_is_given() -> None:
    condition = thread_session_deleted("thread_id")
    assert "split_part(thread_id, ':', 1)" in condition
    assert "s.tenant = $1" in condition
    assert "delete_time IS NOT NULL" in condition
