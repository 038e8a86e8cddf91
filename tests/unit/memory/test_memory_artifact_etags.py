"""Artifact etags: which version a put supersedes and when a client's etag names it."""

from __future__ import annotations

import hashlib

import grpc
import pytest

from agentmesh.core.errors import Aborted
from agentmesh.memory.domain.artifacts import (
    ETAG_MISMATCH,
    Content,
    check_etag,
    etag,
    etag_matches,
    superseded,
)

pytestmark = pytest.mark.unit

SHA = hashlib.sha256(b"v1").hexdigest()
OTHER_SHA = hashlib.sha256(b"v1, again").hexdigest()


def test_an_etag_is_a_quoted_version_and_content_prefix() -> None:
    tag = etag(3, SHA)
    assert tag == f'"3-{SHA[:16]}"'
    assert tag[0] == tag[-1] == '"'  # an RFC 9110 entity tag


def test_a_put_supersedes_the_version_before_the_one_it_gets() -> None:
    assert superseded(1) == 0  # the first put supersedes nothing
    assert superseded(8) == 7


def test_the_etag_of_the_superseded_version_matches() -> None:
    assert etag_matches(etag(7, SHA), 7, SHA)
    check_etag("artifacts/a", etag(7, SHA), 7, SHA)  # no error


@pytest.mark.parametrize(
    ("expected", "version", "sha256"),
    [
        (etag(6, SHA), 7, SHA),  # read before another put: stale
        (etag(7, OTHER_SHA), 7, SHA),  # same version of a re-created artifact
        ('"7"', 7, SHA),  # not an etag this service issues
        ("", 7, SHA),
        (etag(0, SHA), 0, None),  # nothing to supersede: no etag names it
        (etag(7, SHA), 7, None),  # the version is gone
    ],
)
def test_any_other_etag_is_a_conflict(expected: str, version: int, sha256: str | None) -> None:
    assert not etag_matches(expected, version, sha256)
    with pytest.raises(Aborted) as raised:
        check_etag("artifacts/a", expected, version, sha256)
    assert raised.value.code == grpc.StatusCode.ABORTED
    assert raised.value.reason == ETAG_MISMATCH
    assert "artifacts/a changed since etag" in raised.value.message
    assert f"latest version is {version}" in raised.value.message


def test_content_is_known_by_its_size_and_digest() -> None:
    raw = "ünïcode".encode()
    assert Content.of(raw) == Content(len(raw), hashlib.sha256(raw).hexdigest())
    assert Content.of(b"") == Content(0, hashlib.sha256(b"").hexdigest())
