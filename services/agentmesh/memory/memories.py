"""MemoryService RPCs: long-term memories (create, get, list, update, delete, search)."""

from __future__ import annotations

from agentmesh.memory.rpc import RpcGroup


class MemoryRpcs(RpcGroup):
    """Long-term memories: create, batch create, get, list, update, delete, search.

    RPCs not defined here answer UNIMPLEMENTED (see servicer.py).
    """
