"""Session rules without a database: etag conflicts, deletion, the update mask."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest

from agentmesh.core.errors import Aborted, AlreadyExists, InvalidArgument, NotFound
from agentmesh.memory.domain.sessions import (
    MASKABLE,
    Holder,
    SessionDeletedError,
    SessionNotDeletedError,
    delete_refusal,
    is_soft_delete,
    mask_paths,
    taken_error,
    undelete_refusal,
    write_refusal,
)

pytestmark = pytest.mark.unit

DELETED = Holder(
    datetime(2026, 11, 24, 22, 0, tzinfo=UTC), datetime(2026, 12, 1, 22, 0, tzinfo=UTC)
)
LIVE = Holder(None, None)


def test_a_write_that_missed_a_live_session_is_an_etag_conflict() -> None:
    error = write_refusal("trip", live=True)
    assert isinstance(error, Aborted)
    assert error.code == grpc.StatusCode.ABORTED
    assert error.reason == "ETAG_MISMATCH"
    assert "'sessions/trip' changed since the etag was read" in error.message


def test_a_write_that_missed_a_missing_session_is_not_found() -> None:
    error = write_refusal("trip", live=False)
    assert isinstance(error, NotFound)
    assert error.message == "agentmesh.dev/Session 'sessions/trip' not found"


@pytest.mark.parametrize(("purge_after_s", "soft"), [(0, False), (1, True), (7 * 86_400, True)])
def test_delete_is_soft_unless_the_purge_delay_is_zero(purge_after_s: int, soft: bool) -> None:
    assert is_soft_delete(purge_after_s) is soft


def test_allow_missing_makes_deleting_a_session_that_is_not_live_a_success() -> None:
    assert delete_refusal("trip", live=False, allow_missing=True) is None


def test_without_allow_missing_deleting_what_is_not_live_is_not_found() -> None:
    assert isinstance(delete_refusal("trip", live=False, allow_missing=False), NotFound)


@pytest.mark.parametrize("allow_missing", [True, False])
def test_deleting_a_live_session_with_a_stale_etag_is_a_conflict(allow_missing: bool) -> None:
    error = delete_refusal("trip", live=True, allow_missing=allow_missing)
    assert isinstance(error, Aborted)
    assert error.reason == "ETAG_MISMATCH"


def test_undeleting_a_live_session_says_there_is_nothing_to_undelete() -> None:
    assert isinstance(undelete_refusal("trip", LIVE), SessionNotDeletedError)


@pytest.mark.parametrize("holder", [None, DELETED])
def test_undeleting_what_is_gone_or_past_its_purge_is_not_found(holder: Holder | None) -> None:
    error = undelete_refusal("trip", holder)
    assert isinstance(error, NotFound)
    assert error.message == "agentmesh.dev/Session 'sessions/trip' not found"


def test_an_id_taken_by_a_deleted_session_says_when_it_is_free() -> None:
    error = taken_error("trip", DELETED)
    assert isinstance(error, SessionDeletedError)
    assert error.metadata["purge_time"] == "2026-12-01T22:00:00Z"


@pytest.mark.parametrize("holder", [None, LIVE])
def test_an_id_taken_by_a_live_session_is_a_plain_already_exists(holder: Holder | None) -> None:
    error = taken_error("trip", holder)
    assert type(error) is AlreadyExists
    assert error.reason == "RESOURCE_ALREADY_EXISTS"


def test_a_star_mask_writes_every_field() -> None:
    assert mask_paths(["*"], ()) == frozenset(MASKABLE)
    assert mask_paths(["labels", "*"], ()) == frozenset(MASKABLE)


def test_an_empty_mask_writes_the_fields_the_request_sets() -> None:
    assert mask_paths([], {"labels"}) == {"labels"}
    assert mask_paths([], {"display_name", "metadata"}) == {"display_name", "metadata"}
    assert mask_paths([], ()) == frozenset()


def test_a_mask_writes_its_paths_even_when_the_request_leaves_them_empty() -> None:
    assert mask_paths(["display_name"], ()) == {"display_name"}


def test_unknown_mask_paths_are_invalid_and_named() -> None:
    with pytest.raises(InvalidArgument) as raised:
        mask_paths(["labels", "message_count", "etag"], ())
    ((field, why),) = raised.value.violations
    assert field == "update_mask"
    assert why == (
        "unknown paths 'message_count', 'etag'; updatable: display_name, labels, metadata"
    )
