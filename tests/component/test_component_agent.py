"""The Agent service over real gRPC: its registry, paging, filters and errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

import grpc
import pytest

from agentmesh.agent.app import build_agent
from agentmesh.agent.registry import ECHO, AgentCard, Registry
from agentmesh.core.auth import mint_token
from agentmesh.core.server import RunningServer, start_server
from agentmesh.core.settings import Settings
from agentmesh.v1 import agent_pb2, agent_pb2_grpc, common_pb2

SECRET = "component-test-secret-of-32-bytes-at-least"


def _card(agent_id: str, **labels: str) -> AgentCard:
    return AgentCard(
        agent_id=agent_id, display_name=agent_id, description="d", version="1", labels=labels
    )


REGISTRY = Registry(
    [
        ECHO,
        _card("alpha", team="a"),
        _card("beta", team="b"),
        _card("gamma", team="a"),
        AgentCard(
            agent_id="delta", display_name="D", description="d", version="1", long_running=True
        ),
    ]
)


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[RunningServer]:
    settings = Settings.from_env(
        {
            "AGENTMESH_GRPC_PORT": "0",
            "AGENTMESH_METRICS_PORT": "0",
            "AGENTMESH_AUTH_HS256_SECRET": SECRET,
        },
        service="agent",
    )
    running = await start_server(settings, await build_agent(settings, registry=REGISTRY))
    try:
        yield running
    finally:
        await running.stop(0)


@pytest.fixture(scope="module")
async def stub(server: RunningServer) -> AsyncIterator[agent_pb2_grpc.AgentServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        # mypy-protobuf types the same runtime stub as AsyncStub on an aio channel.
        yield cast("agent_pb2_grpc.AgentServiceAsyncStub", agent_pb2_grpc.AgentServiceStub(channel))


META = (("authorization", f"Bearer {mint_token(SECRET, 'acme')}"),)


async def test_get_agent_returns_the_card(stub: agent_pb2_grpc.AgentServiceAsyncStub) -> None:
    agent = await stub.GetAgent(agent_pb2.GetAgentRequest(name="agents/echo"), metadata=META)
    assert agent == ECHO.to_proto()
    assert agent.input_schema.fields["type"].string_value == "object"
    assert agent.skills[0].examples


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("agents/nope", grpc.StatusCode.NOT_FOUND),
        ("agents/", grpc.StatusCode.INVALID_ARGUMENT),
        ("echo", grpc.StatusCode.INVALID_ARGUMENT),
        ("", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_get_agent_errors(
    stub: agent_pb2_grpc.AgentServiceAsyncStub, name: str, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetAgent(agent_pb2.GetAgentRequest(name=name), metadata=META)
    assert caught.value.code() == code


async def test_list_pages_through_every_agent_in_name_order(
    stub: agent_pb2_grpc.AgentServiceAsyncStub,
) -> None:
    names: list[str] = []
    token = ""
    for _ in range(10):
        page = await stub.ListAgents(
            agent_pb2.ListAgentsRequest(page_size=2, page_token=token), metadata=META
        )
        assert len(page.agents) <= 2
        names += [a.name for a in page.agents]
        token = page.next_page_token
        if not token:
            break
    assert names == [f"agents/{i}" for i in ("alpha", "beta", "delta", "echo", "gamma")]


async def test_list_filters_by_label_and_flag(stub: agent_pb2_grpc.AgentServiceAsyncStub) -> None:
    page = await stub.ListAgents(
        agent_pb2.ListAgentsRequest(filter='labels.team = "a"'), metadata=META
    )
    assert [a.name for a in page.agents] == ["agents/alpha", "agents/gamma"]
    page = await stub.ListAgents(
        agent_pb2.ListAgentsRequest(filter="long_running = true"), metadata=META
    )
    assert [a.name for a in page.agents] == ["agents/delta"]


@pytest.mark.parametrize(
    "request_",
    [
        agent_pb2.ListAgentsRequest(filter="owner = x"),
        agent_pb2.ListAgentsRequest(filter="long_running = maybe"),
        agent_pb2.ListAgentsRequest(page_size=-1),
        agent_pb2.ListAgentsRequest(page_token="not-a-token"),
    ],
)
async def test_list_bad_input_is_invalid_argument(
    stub: agent_pb2_grpc.AgentServiceAsyncStub, request_: agent_pb2.ListAgentsRequest
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListAgents(request_, metadata=META)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_page_token_of_another_filter_is_refused(
    stub: agent_pb2_grpc.AgentServiceAsyncStub,
) -> None:
    first = await stub.ListAgents(agent_pb2.ListAgentsRequest(page_size=1), metadata=META)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListAgents(
            agent_pb2.ListAgentsRequest(
                page_size=1, page_token=first.next_page_token, filter='labels.team = "a"'
            ),
            metadata=META,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_listed_card_without_a_graph_is_not_runnable(
    stub: agent_pb2_grpc.AgentServiceAsyncStub,
) -> None:
    """Cards list what is registered; runs need the agent's graph (here only echo's)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.InvokeAgent(
            agent_pb2.InvokeAgentRequest(name="agents/alpha", parts=[common_pb2.Part(text="x")]),
            metadata=META,
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_registry_refuses_duplicates_and_bad_ids() -> None:
    with pytest.raises(ValueError, match="twice"):
        Registry([ECHO, ECHO])
    with pytest.raises(Exception, match="id"):
        Registry([_card("Bad_Id")])
