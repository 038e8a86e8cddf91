"""MemoryService RPCs: The LangGraph store: put, get, delete, search, list namespaces."""

from __future__ import annotations

from agentmesh.memory.rpc import RpcGroup


class StoreRpcs(RpcGroup):
    """The LangGraph store: put, get, delete, search, list namespaces.

    RPCs not defined here answer UNIMPLEMENTED (see servicer.py).
    """
