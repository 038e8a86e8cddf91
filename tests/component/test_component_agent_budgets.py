"""Per-tenant agent budgets, shared by replicas through the real Redis: runs per minute
counted across two Agent servers, tokens per day refusing the next run; refusals are
RESOURCE_EXHAUSTED with QuotaFailure and RetryInfo; other tenants are untouched."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeAlias, cast

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from agentmesh.agent.app import build_agent
from agentmesh.agent.runtime.budgets import BudgetExceededError, TenantBudgets, budget_storage
from agentmesh.agent.settings import AgentSettings
from agentmesh.core.server import start_server
from agentmesh.core.settings import Settings
from agentmesh.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from component.conftest import SECRET, Backends, credentials
from component.memory_helpers import expect_error, uid

if TYPE_CHECKING:
    AgentStub: TypeAlias = agent_pb2_grpc.AgentServiceAsyncStub
else:
    AgentStub = agent_pb2_grpc.AgentServiceStub


@asynccontextmanager
async def _replica(redis_url: str, agent: AgentSettings) -> AsyncIterator[AgentStub]:
    settings = Settings.from_env(
        {
            "AGENTMESH_GRPC_PORT": "0",
            "AGENTMESH_METRICS_PORT": "0",
            "AGENTMESH_AUTH_HS256_SECRET": SECRET,
            "AGENTMESH_REDIS_URL": redis_url,
        },
        service="agent",
    )
    running = await start_server(settings, await build_agent(settings, agent))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield cast("AgentStub", agent_pb2_grpc.AgentServiceStub(channel))
    finally:
        await running.stop(0)


def _echo() -> agent_pb2.InvokeAgentRequest:
    return agent_pb2.InvokeAgentRequest(name="agents/echo", parts=[common_pb2.Part(text="x")])


async def test_runs_per_minute_are_shared_by_replicas(backends: Backends) -> None:
    agent = AgentSettings(tenant_runs_per_minute=3)
    refused = (
        REGISTRY.get_sample_value(
            "agentmesh_agent_budget_refusals_total", {"budget": "runs_per_minute"}
        )
        or 0
    )
    tenant, other = credentials(f"budget-{uid()}"), credentials(f"budget-{uid()}")
    async with (
        _replica(backends.redis_url, agent) as a,
        _replica(backends.redis_url, agent) as b,
    ):
        await a.InvokeAgent(_echo(), metadata=tenant)
        await b.InvokeAgent(_echo(), metadata=tenant)
        await a.InvokeAgent(_echo(), metadata=tenant)
        error = await expect_error(
            b.InvokeAgent(_echo(), metadata=tenant), grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        status = rpc_status.from_call(cast("grpc.Call", error))
        assert status is not None
        failure, retry = error_details_pb2.QuotaFailure(), error_details_pb2.RetryInfo()
        assert any(d.Unpack(failure) for d in status.details)
        assert any(d.Unpack(retry) for d in status.details)
        assert failure.violations[0].quota_value == 3
        assert 0 < retry.retry_delay.seconds <= 60
        assert (
            REGISTRY.get_sample_value(
                "agentmesh_agent_budget_refusals_total", {"budget": "runs_per_minute"}
            )
            == refused + 1
        )
        # Another tenant has a budget of its own.
        await a.InvokeAgent(_echo(), metadata=other)


async def test_a_day_of_tokens_spent_refuses_the_next_run(backends: Backends) -> None:
    budgets = TenantBudgets(
        budget_storage(backends.redis_url), runs_per_minute=0, tokens_per_day=100
    )
    tenant = f"tokens-{uid()}"
    await budgets.admit_run(tenant)
    await budgets.spend_tokens(tenant, 60)
    await budgets.admit_run(tenant)  # 60 of 100 spent: still admitted
    await budgets.spend_tokens(tenant, 250)  # a large run fills the day's budget
    with pytest.raises(BudgetExceededError) as raised:
        await budgets.admit_run(tenant)
    assert raised.value.violation.quota_metric == "agentmesh.dev/agent_tokens_per_day"
    assert raised.value.retry_after_s > 0
    await budgets.admit_run(f"tokens-{uid()}")  # another tenant
