"""MemoryService RPCs: Versioned artifacts: put, get, list, list versions, delete."""

from __future__ import annotations

from agentmesh.memory.rpc import RpcGroup


class ArtifactRpcs(RpcGroup):
    """Versioned artifacts: put, get, list, list versions, delete.

    RPCs not defined here answer UNIMPLEMENTED (see servicer.py).
    """
