"""Composition root of the Agent service: the one builder used by the process and by tests."""

from __future__ import annotations

import grpc

from agentmesh.agent.registry import Registry, builtin_registry
from agentmesh.agent.servicer import AgentServicer
from agentmesh.core.server import ServiceSpec
from agentmesh.core.settings import Settings
from agentmesh.v1 import agent_pb2, agent_pb2_grpc

SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name


async def build_agent(settings: Settings, registry: Registry | None = None) -> ServiceSpec:
    """Wires the Agent service.

    No probes: the service holds no connections of its own yet. Calls to Memory go
    through Envoy, which balances over healthy replicas; making our readiness follow
    Memory's would cascade one outage into every service (see docs/adr).
    """
    servicer = AgentServicer(registry or builtin_registry())  # type: ignore[abstract]  # see fill_unimplemented

    def register(server: grpc.aio.Server) -> None:
        agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)

    return ServiceSpec(name="agent", service_names=[SERVICE_NAME], register=register)
