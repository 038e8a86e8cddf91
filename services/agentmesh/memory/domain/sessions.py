"""Rules of sessions that need neither the wire nor the database.

- Conditional writes: after an UpdateSession or DeleteSession matched no row, whether
  the caller gets NOT_FOUND or the etag conflict (``write_refusal``).
- Deletion (AIP-164): soft unless ``AGENTMESH_MEMORY_SESSION_PURGE_AFTER_S`` is 0
  (``is_soft_delete``); what a delete that matched nothing answers
  (``delete_refusal``), what an undelete that matched nothing answers
  (``undelete_refusal``) and what CreateSession says of an id that is taken
  (``taken_error``), from the ``Holder`` of the id.
- The update mask (AIP-134): which fields an update writes (``mask_paths``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from agentmesh.core.errors import Aborted, AlreadyExists, DomainError, InvalidArgument, NotFound
from agentmesh.core.names import SESSIONS
from agentmesh.memory import convert

MASKABLE: Final = ("display_name", "labels", "metadata")
"""The fields of a Session an update can write, in the order messages name them."""


def _rfc3339(value: datetime) -> str:
    """A time as the JSON API prints it (``2026-11-24T22:00:03.088894Z``)."""
    stamp = convert.timestamp(value)
    assert stamp is not None
    return stamp.ToJsonString()


class SessionDeletedError(AlreadyExists):
    """CreateSession with the id of a deleted session that is not purged yet (AIP-164).

    ALREADY_EXISTS like a live session's id, but with its own reason: the session is
    not there to be used (a "create, or use the one that exists" client must not take
    it for its own), and the message and metadata say when the id becomes free.
    """

    def __init__(self, session_id: str, delete_time: datetime, purge_time: datetime) -> None:
        name = SESSIONS.format(session_id)
        super().__init__(SESSIONS.resource_type, name)
        purge = _rfc3339(purge_time)
        self.message = (
            f"{SESSIONS.resource_type} {name!r} already exists as a deleted session:"
            f" UndeleteSession restores it until its purge at {purge}, when the id is free"
            " again"
        )
        self.args = (self.message,)
        self.reason = "SESSION_DELETED"
        self.metadata = {
            **self.metadata,
            "delete_time": _rfc3339(delete_time),
            "purge_time": purge,
        }


class SessionNotDeletedError(AlreadyExists):
    """UndeleteSession of a session that is not deleted (AIP-164: ALREADY_EXISTS)."""

    _verb = "exists and is not deleted: there is nothing to undelete"


@dataclass(frozen=True, slots=True)
class Holder:
    """The session row that holds an id, as far as deletion goes: a live session has
    neither time; a deleted one has both."""

    delete_time: datetime | None
    purge_time: datetime | None

    @property
    def live(self) -> bool:
        return self.delete_time is None


def _not_found(session_id: str) -> NotFound:
    return NotFound(SESSIONS.resource_type, SESSIONS.format(session_id))


def write_refusal(session_id: str, *, live: bool) -> NotFound | Aborted:
    """What a conditional write (update, delete) that matched no row answers, given
    whether the session is live now: NOT_FOUND when it is not (never existed, deleted
    or purged), else the etag did not match: ABORTED ``ETAG_MISMATCH``."""
    if not live:
        return _not_found(session_id)
    return Aborted(
        "ETAG_MISMATCH",
        f"session {SESSIONS.format(session_id)!r} changed since the etag was read;"
        " get it again and retry",
    )


def is_soft_delete(purge_after_s: int) -> bool:
    """Whether DeleteSession keeps the session until a purge ``purge_after_s`` seconds
    later (soft delete), or removes it and all it holds at once (0: hard delete)."""
    return purge_after_s > 0


def delete_refusal(session_id: str, *, live: bool, allow_missing: bool) -> DomainError | None:
    """What a DeleteSession that matched no live row answers: success (None) when the
    session is not live and ``allow_missing`` says that is fine; otherwise as any
    conditional write. Deleting a deleted session changes nothing (its purge time
    stays): it is NOT_FOUND like a missing one."""
    if allow_missing and not live:
        return None
    return write_refusal(session_id, live=live)


def undelete_refusal(session_id: str, holder: Holder | None) -> DomainError:
    """What an UndeleteSession that matched no row answers. An undelete is possible
    only for a deleted session before its purge time (the write checks that itself);
    when it matched nothing, a live holder means there is nothing to undelete, and
    anything else (no such id, or deleted and past its purge time, which is purged for
    every purpose whether or not the janitor has removed the row) is NOT_FOUND."""
    if holder is not None and holder.live:
        return SessionNotDeletedError(SESSIONS.resource_type, SESSIONS.format(session_id))
    return _not_found(session_id)


def taken_error(session_id: str, holder: Holder | None) -> AlreadyExists:
    """CreateSession found the id taken: by a live session (ALREADY_EXISTS), or by a
    deleted one not purged yet (``SessionDeletedError``, which says when it is free)."""
    if holder is not None and holder.delete_time is not None and holder.purge_time is not None:
        return SessionDeletedError(session_id, holder.delete_time, holder.purge_time)
    return AlreadyExists(SESSIONS.resource_type, SESSIONS.format(session_id))


def mask_paths(paths: Sequence[str], present: Collection[str]) -> frozenset[str]:
    """The fields an update writes (contract, AIP-134): ``*`` means all of them; an
    empty mask means those set in the request (``present``), so a PATCH of one field
    from a web client never clears the others. An unknown path is INVALID_ARGUMENT."""
    if "*" in paths:
        return frozenset(MASKABLE)
    if not paths:
        return frozenset(path for path in MASKABLE if path in present)
    unknown = [path for path in paths if path not in MASKABLE]
    if unknown:
        raise InvalidArgument(
            "update_mask",
            f"unknown paths {', '.join(map(repr, unknown))}; updatable: {', '.join(MASKABLE)}",
        )
    return frozenset(paths)
