"""Artifact versions and their etags: which version a put supersedes, and when the
etag a client sends still names it.

An artifact's versions are 1, 2, 3… (the store allocates the next one under the head
row's lock). A conditional put carries the etag of the version it was based on; it
succeeds only when that is the version it is about to supersede, so two writers that
read the same version cannot both win (a lost update becomes ABORTED).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from agentmesh.core.errors import Aborted

ETAG_MISMATCH: Final = "ETAG_MISMATCH"
"""The ``reason`` of the ABORTED answer to a put whose etag is stale."""


@dataclass(frozen=True, slots=True)
class Content:
    """What a version's content is known by: its size and its digest."""

    size_bytes: int
    sha256: str
    """Lower-case hex SHA-256 of the raw bytes (UTF-8 for text)."""

    @classmethod
    def of(cls, raw: bytes) -> Content:
        return cls(size_bytes=len(raw), sha256=hashlib.sha256(raw).hexdigest())


def etag(version: int, sha256: str) -> str:
    """The etag of one version. Opaque to clients; quoted (RFC 9110). The content hash
    beside the version means an etag read before an artifact was deleted and created
    again does not match the new one (unless the content is the same, when the
    difference does not matter)."""
    return f'"{version}-{sha256[:16]}"'


def superseded(version: int) -> int:
    """The version a put allocated ``version`` supersedes; 0 when it is the first."""
    return version - 1


def etag_matches(expected: str, version: int, sha256: str | None) -> bool:
    """Whether ``expected`` is the etag of ``version``, whose content hash is ``sha256``
    (None: no such version, e.g. the artifact does not exist yet, which no etag names)."""
    return sha256 is not None and etag(version, sha256) == expected


def check_etag(name: str, expected: str, version: int, sha256: str | None) -> None:
    """ABORTED (``ETAG_MISMATCH``) unless ``expected`` names ``version`` of ``name``
    (see :func:`etag_matches`), telling the client to read it again."""
    if not etag_matches(expected, version, sha256):
        raise Aborted(
            ETAG_MISMATCH,
            f"{name} changed since etag {expected} was read"
            f" (latest version is {version}); get it again and retry",
        )
