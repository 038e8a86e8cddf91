"""MemoryService RPCs: LangGraph checkpoints (put, get, list, delete, copy, prune)."""

from __future__ import annotations

from agentmesh.memory.rpc import RpcGroup


class CheckpointRpcs(RpcGroup):
    """LangGraph checkpoints: put, put writes, get, list, delete or copy threads, prune.

    RPCs not defined here answer UNIMPLEMENTED (see servicer.py).
    """
