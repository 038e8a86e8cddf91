"""The request fingerprint behind request_id replays: same request, same fingerprint."""

from __future__ import annotations

import pytest
from google.protobuf import struct_pb2

from agentmesh.core.idempotency import fingerprint
from agentmesh.v1 import memory_pb2

pytestmark = pytest.mark.unit


def _session_request(request_id: str, **labels: str) -> memory_pb2.CreateSessionRequest:
    metadata = struct_pb2.Struct()
    metadata.update({"b": 2, "a": 1})
    return memory_pb2.CreateSessionRequest(
        session=memory_pb2.Session(display_name="x", labels=labels, metadata=metadata),
        session_id="s1",
        request_id=request_id,
    )


def test_the_request_id_itself_is_not_part_of_the_fingerprint() -> None:
    assert fingerprint(_session_request("r1", a="1")) == fingerprint(_session_request("r2", a="1"))


def test_map_order_does_not_matter() -> None:
    forward = _session_request("r", a="1", b="2")
    backward = memory_pb2.CreateSessionRequest()
    backward.CopyFrom(forward)
    backward.session.labels.clear()
    backward.session.labels["b"] = "2"
    backward.session.labels["a"] = "1"
    assert fingerprint(forward) == fingerprint(backward)


def test_any_other_difference_changes_it() -> None:
    base = _session_request("r", a="1")
    other_label = _session_request("r", a="2")
    other_id = _session_request("r", a="1")
    other_id.session_id = "s2"
    assert len({fingerprint(base), fingerprint(other_label), fingerprint(other_id)}) == 3
    assert len(fingerprint(base)) == 32  # SHA-256


def test_the_request_is_left_untouched() -> None:
    request = _session_request("keep-me")
    fingerprint(request)
    assert request.request_id == "keep-me"


def test_messages_without_a_request_id_field_are_fingerprinted_whole() -> None:
    one = memory_pb2.GetSessionRequest(name="sessions/a")
    two = memory_pb2.GetSessionRequest(name="sessions/b")
    assert fingerprint(one) != fingerprint(two)
