"""Conversations over native gRPC through Envoy's external listener (what a backend
uses), on the devstack's Conductor, Memory and Agent services."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agentmesh.core.auth import mint_token
from agentmesh.devstack.stack import DevStack
from agentmesh.v1 import common_pb2, conductor_pb2, conductor_pb2_grpc, memory_pb2, memory_pb2_grpc

Metadata = tuple[tuple[str, str], ...]
TIMEOUT_S = 10.0
STREAM_TIMEOUT_S = 60.0
"""Deadline of a whole turn or watch on a loaded 2-core box."""


@pytest.fixture
def conductor(envoy_channel: grpc.Channel) -> conductor_pb2_grpc.ConductorServiceStub:
    return conductor_pb2_grpc.ConductorServiceStub(envoy_channel)


@pytest.fixture
def memory(envoy_channel: grpc.Channel) -> memory_pb2_grpc.MemoryServiceStub:
    return memory_pb2_grpc.MemoryServiceStub(envoy_channel)


def new_session() -> str:
    return f"sessions/grpc-{uuid.uuid4().hex[:12]}"


def converse(
    conductor: conductor_pb2_grpc.ConductorServiceStub, metadata: Metadata, **fields: Any
) -> list[conductor_pb2.ConverseEvent]:
    request = conductor_pb2.ConverseRequest(**fields)
    return list(conductor.Converse(request, metadata=metadata, timeout=STREAM_TIMEOUT_S))


def say(text: str) -> dict[str, Any]:
    return {"agent": "agents/echo", "parts": [common_pb2.Part(text=text)]}


def kinds(events: list[conductor_pb2.ConverseEvent]) -> list[str | None]:
    return [e.WhichOneof("event") for e in events]


def detail_types(error: grpc.RpcError) -> set[str]:
    """The full names of the `google.rpc.Status` details in the error's trailers."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status in the trailers"
    return {d.TypeName() for d in status.details}


def test_turns_over_grpc_are_numbered_across_the_session_and_recorded(
    conductor: conductor_pb2_grpc.ConductorServiceStub,
    memory: memory_pb2_grpc.MemoryServiceStub,
    auth_metadata: Metadata,
) -> None:
    session = new_session()
    first = converse(conductor, auth_metadata, session=session, create_session=True, **say("a"))
    second = converse(conductor, auth_metadata, session=session, **say("b"))

    for turn in (first, second):
        assert kinds(turn)[0] == "routing"
        assert kinds(turn)[-1] == "final"
        assert len({e.turn_id for e in turn}) == 1
    events = first + second
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert first[0].routing.strategy == conductor_pb2.ROUTING_STRATEGY_EXPLICIT
    assert [t[-1].final.parts[0].text for t in (first, second)] == ["a", "b"]

    listed = memory.ListMessages(
        memory_pb2.ListMessagesRequest(parent=session), metadata=auth_metadata, timeout=TIMEOUT_S
    )
    assert [(m.role, m.parts[0].text) for m in listed.messages] == [
        (common_pb2.ROLE_USER, "a"),
        (common_pb2.ROLE_ASSISTANT, "a"),
        (common_pb2.ROLE_USER, "b"),
        (common_pb2.ROLE_ASSISTANT, "b"),
    ]
    decision = memory.GetDecision(
        memory_pb2.GetDecisionRequest(name=second[0].routing.decision),
        metadata=auth_metadata,
        timeout=TIMEOUT_S,
    )
    assert decision.chosen_action == "agents/echo"
    assert decision.session == session


def test_a_cancelled_converse_is_resumed_with_watch_conversation(
    conductor: conductor_pb2_grpc.ConductorServiceStub, auth_metadata: Metadata
) -> None:
    session = new_session()
    call = conductor.Converse(
        conductor_pb2.ConverseRequest(session=session, create_session=True, **say("gone")),
        metadata=auth_metadata,
        timeout=STREAM_TIMEOUT_S,
    )
    seen = next(iter(call))
    call.cancel()  # type: ignore[no-untyped-call]  # the client leaves after the routing decision
    assert seen.WhichOneof("event") == "routing"

    watch = conductor.WatchConversation(
        conductor_pb2.WatchConversationRequest(session=session, after_sequence=seen.sequence),
        metadata=auth_metadata,
        timeout=STREAM_TIMEOUT_S,
    )
    missed = []
    for event in watch:
        missed.append(event)
        if event.WhichOneof("event") == "final":
            break
    watch.cancel()  # type: ignore[no-untyped-call]  # a watch stays open for live turns
    assert [e.sequence for e in missed] == list(range(2, len(missed) + 2))
    assert {e.turn_id for e in missed} == {seen.turn_id}
    assert missed[-1].final.parts[0].text == "gone"

    # Beyond the latest event: OUT_OF_RANGE, naming the field.
    beyond = conductor.WatchConversation(
        conductor_pb2.WatchConversationRequest(session=session, after_sequence=1_000),
        metadata=auth_metadata,
        timeout=STREAM_TIMEOUT_S,
    )
    with pytest.raises(grpc.RpcError) as caught:
        list(beyond)
    assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert error_details_pb2.BadRequest.DESCRIPTOR.full_name in detail_types(caught.value)


def test_an_interrupt_over_grpc_is_answered_by_the_next_converse(
    conductor: conductor_pb2_grpc.ConductorServiceStub, auth_metadata: Metadata
) -> None:
    session = new_session()
    action = struct_pb2.Struct()
    action.update({"action": "delete the archive"})
    paused = converse(
        conductor,
        auth_metadata,
        session=session,
        create_session=True,
        agent="agents/approval",
        parts=[common_pb2.Part(text="clean up")],
        input=action,
    )
    assert kinds(paused)[-1] == "interrupt"
    resumed = converse(
        conductor,
        auth_metadata,
        session=session,
        resume=common_pb2.ResumeInput(
            interrupt_id=paused[-1].interrupt.id, answer=struct_pb2.Value(string_value="no")
        ),
    )
    assert kinds(resumed)[-1] == "final"
    assert resumed[0].sequence == paused[-1].sequence + 1
    finals = [e.agent_event.final for e in resumed if e.agent_event.HasField("final")]
    assert [dict(f.output) for f in finals] == [{"action": "delete the archive", "approved": False}]


def test_a_retried_request_id_replays_and_a_foreign_tenant_sees_nothing(
    stack: DevStack, conductor: conductor_pb2_grpc.ConductorServiceStub, auth_metadata: Metadata
) -> None:
    session = new_session()
    request = {"session": session, "create_session": True, "request_id": str(uuid.uuid4())}
    first = converse(conductor, auth_metadata, **request, **say("once"))
    assert converse(conductor, auth_metadata, **request, **say("once")) == first

    other: Metadata = (("authorization", f"Bearer {mint_token(stack.secret, 'globex')}"),)
    with pytest.raises(grpc.RpcError) as caught:
        converse(conductor, other, session=session, **say("mine now"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_details_pb2.ResourceInfo.DESCRIPTOR.full_name in detail_types(caught.value)
    with pytest.raises(grpc.RpcError) as caught:
        list(
            conductor.WatchConversation(
                conductor_pb2.WatchConversationRequest(session=session),
                metadata=other,
                timeout=STREAM_TIMEOUT_S,
            )
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
