"""MemoryService: one servicer composed of per-domain RPC groups.

Each group (sessions, messages, ...) is an object of its own over the shared
``MemoryDeps``; :func:`~agentmesh.core.contract.compose_servicer` delegates every RPC
to the one group that defines it and refuses an RPC defined twice or nowhere.
"""

from __future__ import annotations

from agentmesh.core.contract import compose_servicer
from agentmesh.memory.deps import MemoryDeps
from agentmesh.memory.rpcs.artifacts import ArtifactRpcs
from agentmesh.memory.rpcs.checkpoints import CheckpointRpcs
from agentmesh.memory.rpcs.decisions import DecisionRpcs
from agentmesh.memory.rpcs.embeddings import EmbeddingRpcs
from agentmesh.memory.rpcs.memories import MemoryRpcs
from agentmesh.memory.rpcs.messages import MessageRpcs
from agentmesh.memory.rpcs.sessions import SessionRpcs
from agentmesh.memory.rpcs.store_items import StoreRpcs
from agentmesh.memory.rpcs.working import WorkingMemoryRpcs
from agentmesh.v1 import memory_pb2, memory_pb2_grpc

GROUPS = (
    SessionRpcs,
    MessageRpcs,
    WorkingMemoryRpcs,
    MemoryRpcs,
    EmbeddingRpcs,
    DecisionRpcs,
    ArtifactRpcs,
    CheckpointRpcs,
    StoreRpcs,
)
"""The RPC groups of MemoryService, one per domain."""


def memory_servicer(deps: MemoryDeps) -> memory_pb2_grpc.MemoryServiceServicer:
    """Every MemoryService RPC, each served by its domain's group."""
    return compose_servicer(
        memory_pb2_grpc.MemoryServiceServicer,
        memory_pb2.DESCRIPTOR.services_by_name["MemoryService"],
        (group(deps) for group in GROUPS),
    )
