"""ConductorService adapter. Conversation turns arrive with the Conductor issue; until
then every RPC answers UNIMPLEMENTED naming that work."""

from __future__ import annotations

from typing import Final

from agentmesh.core.contract import fill_unimplemented
from agentmesh.v1 import conductor_pb2, conductor_pb2_grpc

_PLAN: Final = "conversation turns (routing, relayed agent events, jobs), the Conductor issue"


@fill_unimplemented(conductor_pb2.DESCRIPTOR.services_by_name["ConductorService"], {"*": _PLAN})
class ConductorServicer(conductor_pb2_grpc.ConductorServiceServicer):
    """The conversation flow; its RPCs come with the Conductor issue."""
