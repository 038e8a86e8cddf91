"""Composition root of the Conductor service: the one builder used by the process and by tests."""

from __future__ import annotations

import grpc

from agentmesh.conductor.servicer import ConductorServicer
from agentmesh.core.server import ServiceSpec
from agentmesh.core.settings import Settings
from agentmesh.v1 import conductor_pb2, conductor_pb2_grpc

SERVICE_NAME = conductor_pb2.DESCRIPTOR.services_by_name["ConductorService"].full_name


async def build_conductor(settings: Settings) -> ServiceSpec:
    """Wires the Conductor service.

    No probes: it owns no storage; Memory, Agent and Job are reached through Envoy,
    which balances over their healthy replicas (see docs/adr on readiness).
    """
    servicer = ConductorServicer()  # type: ignore[abstract]  # see fill_unimplemented

    def register(server: grpc.aio.Server) -> None:
        conductor_pb2_grpc.add_ConductorServiceServicer_to_server(servicer, server)

    return ServiceSpec(name="conductor", service_names=[SERVICE_NAME], register=register)
