"""MemoryService RPCs: Sessions: create, get, list, update, delete."""

from __future__ import annotations

from agentmesh.memory.rpc import RpcGroup


class SessionRpcs(RpcGroup):
    """Sessions: create, get, list, update, delete.

    RPCs not defined here answer UNIMPLEMENTED (see servicer.py).
    """
