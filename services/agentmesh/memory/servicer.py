"""MemoryService: one servicer assembled from per-domain RPC groups.

Each group (sessions, messages, ...) lives in its own module and shares only
``MemoryDeps``. RPCs no group defines yet answer UNIMPLEMENTED naming the plan.
"""

from __future__ import annotations

from typing import Final

from agentmesh.core.contract import fill_unimplemented
from agentmesh.memory.artifacts import ArtifactRpcs
from agentmesh.memory.checkpoints import CheckpointRpcs
from agentmesh.memory.decisions import DecisionRpcs
from agentmesh.memory.memories import MemoryRpcs
from agentmesh.memory.messages import MessageRpcs
from agentmesh.memory.sessions import SessionRpcs
from agentmesh.memory.store import StoreRpcs
from agentmesh.memory.working import WorkingMemoryRpcs
from agentmesh.v1 import memory_pb2, memory_pb2_grpc

_PLAN: Final = "Memory service storage (issue 4)"


@fill_unimplemented(memory_pb2.DESCRIPTOR.services_by_name["MemoryService"], {"*": _PLAN})
class MemoryServicer(
    SessionRpcs,
    MessageRpcs,
    WorkingMemoryRpcs,
    MemoryRpcs,
    DecisionRpcs,
    ArtifactRpcs,
    CheckpointRpcs,
    StoreRpcs,
    memory_pb2_grpc.MemoryServiceServicer,
):
    """Every MemoryService RPC, grouped by domain."""
