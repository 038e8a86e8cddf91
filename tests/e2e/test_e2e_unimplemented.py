"""Parts of the contract that later work brings say so: UNIMPLEMENTED naming the
missing piece, over gRPC and JSON; and the Conductor answers through the mesh."""

from __future__ import annotations

import grpc
import httpx
import pytest

from agentmesh.devstack.stack import DevStack
from agentmesh.v1 import common_pb2, conductor_pb2, conductor_pb2_grpc


def test_background_turns_are_unimplemented(
    stack: DevStack, auth_metadata: tuple[tuple[str, str], ...]
) -> None:
    with grpc.insecure_channel(stack.endpoints["conductor"]) as channel:
        stub = conductor_pb2_grpc.ConductorServiceStub(channel)
        stream = stub.Converse(
            conductor_pb2.ConverseRequest(
                session="sessions/s1",
                agent="agents/echo",
                parts=[common_pb2.Part(text="later")],
                background=True,
            ),
            metadata=auth_metadata,
            timeout=10,
        )
        with pytest.raises(grpc.RpcError) as caught:
            next(iter(stream))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "background turns" in (caught.value.details() or "")


def test_watching_an_unknown_session_over_json_is_404(http: httpx.Client) -> None:
    response = http.get(f"/v1/sessions/s-unknown-{id(http)}:watch")
    assert response.status_code == 404
