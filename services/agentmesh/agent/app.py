"""Composition root of the Agent service: the one builder used by the process and by tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import grpc

from agentmesh.agent.agents import builtin_agents
from agentmesh.agent.definition import AgentDefinition, discover
from agentmesh.agent.registry import Registry
from agentmesh.agent.resources import AgentResources
from agentmesh.agent.runtime.budgets import TenantBudgets, budget_storage
from agentmesh.agent.runtime.record import RunRecorder
from agentmesh.agent.runtime.runner import Runner
from agentmesh.agent.servicer import AgentServicer
from agentmesh.agent.settings import AgentSettings
from agentmesh.core.redis import create_redis
from agentmesh.core.server import ServiceSpec
from agentmesh.core.settings import ConfigError, Settings
from agentmesh.langgraph import AgentmeshSaver, AgentmeshStore
from agentmesh.langgraph._client import MemoryClient, open_memory_channel
from agentmesh.llm.cache import RedisResponseCache
from agentmesh.llm.models import ChatModels
from agentmesh.llm.settings import LlmSettings
from agentmesh.v1 import agent_pb2, agent_pb2_grpc

SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name


async def build_agent(
    settings: Settings,
    agent: AgentSettings | None = None,
    llm: LlmSettings | None = None,
    *,
    definitions: Sequence[AgentDefinition] | None = None,
    registry: Registry | None = None,
) -> ServiceSpec:
    """Wires the Agent service: the agents (built in, installed packages' entry points,
    ``AGENTMESH_AGENT_GRAPHS``; tests may pass ``definitions``), compiled with the
    Memory-backed checkpointer and store when ``AGENTMESH_MEMORY_ADDR`` is set (runs on
    a thread need it; stateless runs do not). ``registry`` replaces the listed cards
    (tests of listing).

    No probes: calls to Memory go through Envoy, which balances over healthy replicas;
    making our readiness follow Memory's would cascade one outage into every service
    (docs/adr/0007).
    """
    agent = agent or AgentSettings()
    llm = llm or LlmSettings()
    on_stop: list[Callable[[], Awaitable[None]]] = []
    saver = store = memory = None
    if settings.memory_addr:
        channel = open_memory_channel(settings.memory_addr, settings)
        timeout_s = settings.client_deadline_ms / 1000
        saver = AgentmeshSaver(channel, timeout_s=timeout_s)
        store = AgentmeshStore(channel, timeout_s=timeout_s)
        memory = MemoryClient(channel, token=None, timeout_s=timeout_s)

        async def close_channel() -> None:
            await channel.close(None)

        on_stop.append(close_channel)
    cache = None
    if llm.cache_ttl_s:
        if not settings.redis_url:
            raise ConfigError(
                "AGENTMESH_LLM_CACHE_TTL_S needs AGENTMESH_REDIS_URL (the cache is in Redis)"
            )
        cache_redis = create_redis(settings)
        cache = RedisResponseCache(cache_redis, ttl_s=llm.cache_ttl_s)

        async def close_cache() -> None:
            await cache_redis.aclose()

        on_stop.append(close_cache)
    resources = AgentResources(llm=llm, models=ChatModels(llm, cache), memory=memory)
    found = (
        list(definitions)
        if definitions is not None
        else discover(agent.graphs, builtin_agents(resources), resources)
    )
    cards = registry or Registry([d.card for d in found])
    budgets = TenantBudgets(
        budget_storage(settings.redis_url),
        runs_per_minute=agent.tenant_runs_per_minute,
        tokens_per_day=agent.tenant_tokens_per_day,
    )
    recorder = RunRecorder(memory, budgets)
    runner = Runner(
        found,
        checkpointer=saver,
        store=store,
        default_model=llm.default_model,
        recorder=recorder,
        budgets=budgets,
    )
    # Decisions still being written are finished before the Memory channel closes.
    on_stop.insert(0, recorder.drain)
    servicer = AgentServicer(cards, runner, agent)

    def register(server: grpc.aio.Server) -> None:
        agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)

    return ServiceSpec(
        name="agent", service_names=[SERVICE_NAME], register=register, on_stop=on_stop
    )
