"""Base of the Memory service's RPC groups.

MemoryService has ~38 RPCs; each domain (sessions, messages, memories, ...) is a
group class in its own module, and ``servicer.memory_servicer`` composes them. Groups
share nothing but ``MemoryDeps`` and the helpers here.
"""

from __future__ import annotations

from agentmesh.core.context import current_tenant
from agentmesh.memory.deps import MemoryDeps


class RpcGroup:
    """A set of MemoryService RPCs over the shared dependencies."""

    def __init__(self, deps: MemoryDeps) -> None:
        self.deps = deps

    @staticmethod
    def tenant() -> str:
        """The caller's tenant, from the verified token (never from the request)."""
        return current_tenant()
