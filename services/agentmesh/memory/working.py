"""MemoryService RPCs: Working memory: per-session key/value in Redis with a TTL."""

from __future__ import annotations

from agentmesh.memory.rpc import RpcGroup


class WorkingMemoryRpcs(RpcGroup):
    """Working memory: per-session key/value in Redis with a TTL.

    RPCs not defined here answer UNIMPLEMENTED (see servicer.py).
    """
