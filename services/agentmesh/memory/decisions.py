"""MemoryService RPCs: The decision audit trail: append, get, list."""

from __future__ import annotations

from agentmesh.memory.rpc import RpcGroup


class DecisionRpcs(RpcGroup):
    """The decision audit trail: append, get, list.

    RPCs not defined here answer UNIMPLEMENTED (see servicer.py).
    """
