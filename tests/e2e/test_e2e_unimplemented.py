"""RPCs that belong to later issues say so: UNIMPLEMENTED naming the missing work."""

from __future__ import annotations

import grpc
import httpx
import pytest

from agentmesh.devstack.stack import DevStack
from agentmesh.v1 import (
    conductor_pb2,
    conductor_pb2_grpc,
)


def test_conductor_rpc_is_unimplemented(
    stack: DevStack, auth_metadata: tuple[tuple[str, str], ...]
) -> None:
    with grpc.insecure_channel(stack.endpoints["conductor"]) as channel:
        stub = conductor_pb2_grpc.ConductorServiceStub(channel)
        stream = stub.Converse(
            conductor_pb2.ConverseRequest(session="sessions/s1"),
            metadata=auth_metadata,
            timeout=10,
        )
        with pytest.raises(grpc.RpcError) as caught:
            next(iter(stream))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    details = caught.value.details() or ""
    assert "ConductorService.Converse" in details
    assert "Conductor issue" in details


def test_unimplemented_over_json_is_501(http: httpx.Client) -> None:
    response = http.get("/v1/sessions/s1:watch")
    assert response.status_code == 501
    assert "ConductorService.WatchConversation" in response.text
