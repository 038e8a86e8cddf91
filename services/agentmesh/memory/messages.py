"""MemoryService RPCs: Message history: append and list."""

from __future__ import annotations

from agentmesh.memory.rpc import RpcGroup


class MessageRpcs(RpcGroup):
    """Message history: append and list.

    RPCs not defined here answer UNIMPLEMENTED (see servicer.py).
    """
