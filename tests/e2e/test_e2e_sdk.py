"""The Python SDK against the whole mesh through Envoy's external listener: the sync
(grpcio) and async (grpclib) clients call each service with the token, an
``x-request-id`` and a deadline, the way a backend would use them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import betterproto2
import grpc
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from agentmesh.devstack.stack import DevStack
from agentmesh.sdk import (
    AppendMessagesRequest,
    ConverseEvent,
    ConverseRequest,
    CreateJobRequest,
    CreateSessionRequest,
    GetAgentRequest,
    GetJobRequest,
    Job,
    ListAgentsRequest,
    ListMessagesRequest,
    MeshClient,
    Message,
    Part,
    Role,
    SearchMemoriesRequest,
    Session,
    WatchConversationRequest,
    aconnect,
    connect,
    error_details,
)

STREAM_TIMEOUT_S = 60.0
"""Deadline of a whole turn on a loaded 2-core box."""


@pytest.fixture
def mesh(stack: DevStack, token: str) -> Iterator[MeshClient]:
    with connect(stack.endpoints["envoy"], token, stream_timeout=STREAM_TIMEOUT_S) as client:
        yield client


def final_text(events: list[ConverseEvent]) -> str:
    kind, final = betterproto2.which_one_of(events[-1], "event")
    assert kind == "final", events[-1]
    return "".join(part.text for part in final.parts)  # type: ignore[union-attr]


def test_the_sync_client_calls_every_service(mesh: MeshClient) -> None:
    session = mesh.memory.create_session(CreateSessionRequest(session=Session(display_name="sdk")))
    said = Message(role=Role.USER, parts=[Part(text="hello from the sdk")])
    mesh.memory.append_messages(AppendMessagesRequest(parent=session.name, messages=[said]))
    listed = mesh.memory.list_messages(ListMessagesRequest(parent=session.name))
    assert [m.parts[0].text for m in listed.messages] == ["hello from the sdk"]
    found = mesh.memory.search_memories(SearchMemoriesRequest(text="nothing stored yet"))
    assert isinstance(found.results, list)

    agents = mesh.agent.list_agents(ListAgentsRequest())
    assert "agents/echo" in {a.name for a in agents.agents}
    assert mesh.agent.get_agent(GetAgentRequest(name="agents/echo")).name == "agents/echo"

    job = mesh.job.create_job(CreateJobRequest(job=Job(agent="agents/echo", parts=[Part("x")])))
    assert mesh.job.get_job(GetJobRequest(name=job.name)).agent == "agents/echo"

    turn = list(
        mesh.conductor.converse(
            ConverseRequest(
                session=f"sessions/sdk-{uuid.uuid4().hex[:12]}",
                create_session=True,
                agent="agents/echo",
                parts=[Part(text="echo this")],
            )
        )
    )
    assert final_text(turn) == "echo this"


async def test_the_async_client_calls_every_service(stack: DevStack, token: str) -> None:
    async with aconnect(stack.endpoints["envoy"], token) as mesh:
        session = await mesh.memory.create_session(CreateSessionRequest(session=Session()))
        said = Message(role=Role.USER, parts=[Part(text="async hello")])
        await mesh.memory.append_messages(
            AppendMessagesRequest(parent=session.name, messages=[said])
        )
        listed = await mesh.memory.list_messages(ListMessagesRequest(parent=session.name))
        assert [m.parts[0].text for m in listed.messages] == ["async hello"]

        agents = await mesh.agent.list_agents(ListAgentsRequest())
        assert "agents/echo" in {a.name for a in agents.agents}
        echo = await mesh.agent.get_agent(GetAgentRequest(name="agents/echo"))
        assert echo.name == "agents/echo"

        job = await mesh.job.create_job(
            CreateJobRequest(job=Job(agent="agents/echo", parts=[Part(text="async")]))
        )
        assert (await mesh.job.get_job(GetJobRequest(name=job.name))).name == job.name

        request = ConverseRequest(
            session=f"sessions/sdk-{uuid.uuid4().hex[:12]}",
            create_session=True,
            agent="agents/echo",
            parts=[Part(text="async echo")],
        )
        turn = [e async for e in mesh.conductor.converse(request, timeout=STREAM_TIMEOUT_S)]
        assert final_text(turn) == "async echo"


def test_address_and_token_come_from_the_environment(
    stack: DevStack, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTMESH_ADDRESS", stack.endpoints["envoy"])
    monkeypatch.setenv("AGENTMESH_TOKEN", token)
    with connect() as mesh:
        assert mesh.agent.get_agent(GetAgentRequest(name="agents/echo")).name == "agents/echo"


def test_no_token_or_a_bad_one_is_unauthenticated(
    stack: DevStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENTMESH_TOKEN", raising=False)
    for token, reason in ((None, "MISSING_TOKEN"), ("not-a-jwt", "MALFORMED_TOKEN")):
        with (
            connect(stack.endpoints["envoy"], token) as mesh,
            pytest.raises(grpc.RpcError) as refused,
        ):
            mesh.agent.list_agents(ListAgentsRequest())
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_details(refused.value).reason == reason


async def test_the_async_client_is_unauthenticated_without_a_token(
    stack: DevStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENTMESH_TOKEN", raising=False)
    async with aconnect(stack.endpoints["envoy"]) as mesh:
        with pytest.raises(GRPCError) as refused:
            await mesh.agent.list_agents(ListAgentsRequest())
    assert refused.value.status == Status.UNAUTHENTICATED
    details = error_details(refused.value)
    assert (details.code, details.reason) == ("UNAUTHENTICATED", "MISSING_TOKEN")


def test_the_request_id_sent_is_the_one_the_error_quotes(mesh: MeshClient) -> None:
    missing = GetAgentRequest(name="agents/nobody")
    chosen = f"sdk-{uuid.uuid4()}"
    with pytest.raises(grpc.RpcError) as failed:
        mesh.with_options(request_id=chosen).agent.get_agent(missing)
    details = error_details(failed.value)
    assert (details.code, details.reason) == ("NOT_FOUND", "RESOURCE_NOT_FOUND")
    assert details.request_id == chosen
    # Without one, every call gets its own.
    seen = set()
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as again:
            mesh.agent.get_agent(missing)
        seen.add(error_details(again.value).request_id)
    assert len(seen) == 2
    assert all(uuid.UUID(request_id).version == 4 for request_id in seen)


async def test_the_async_client_sends_the_callers_request_id(stack: DevStack, token: str) -> None:
    chosen = f"sdk-{uuid.uuid4()}"
    async with aconnect(stack.endpoints["envoy"], token) as mesh:
        with pytest.raises(GRPCError) as failed:
            await mesh.agent.get_agent(
                GetAgentRequest(name="agents/nobody"), metadata={"x-request-id": chosen}
            )
    assert failed.value.status == Status.NOT_FOUND
    assert error_details(failed.value).request_id == chosen


@pytest.mark.timeout(120)
def test_a_deadline_ends_a_call_that_would_wait(mesh: MeshClient) -> None:
    # An idle conversation's watch waits for changes (Envoy's idle timeout is 300 s):
    # only the client's deadline ends it.
    session = f"sessions/sdk-{uuid.uuid4().hex[:12]}"
    request = ConverseRequest(
        session=session, create_session=True, agent="agents/echo", parts=[Part(text="x")]
    )
    last = list(mesh.conductor.converse(request))[-1].sequence
    watch = mesh.with_options(stream_timeout=1.0).conductor.watch_conversation(
        WatchConversationRequest(session=session, after_sequence=last)
    )
    with pytest.raises(grpc.RpcError) as expired:
        list(watch)
    assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, expired.value


@pytest.mark.timeout(120)
async def test_the_async_clients_deadline_ends_a_call_that_would_wait(
    stack: DevStack, token: str
) -> None:
    session = f"sessions/sdk-{uuid.uuid4().hex[:12]}"
    async with aconnect(stack.endpoints["envoy"], token, stream_timeout=1.0) as mesh:
        request = ConverseRequest(
            session=session, create_session=True, agent="agents/echo", parts=[Part(text="x")]
        )
        turn = [e async for e in mesh.conductor.converse(request, timeout=STREAM_TIMEOUT_S)]
        watch = WatchConversationRequest(session=session, after_sequence=turn[-1].sequence)
        with pytest.raises(GRPCError) as expired:
            _ = [e async for e in mesh.conductor.watch_conversation(watch)]
        assert expired.value.status == Status.DEADLINE_EXCEEDED, expired.value
