"""Base of the Memory service's RPC groups.

MemoryService has ~38 RPCs; each domain (sessions, messages, memories, ...) is a
group class in its own module, and ``servicer.memory_servicer`` composes them. Groups
share nothing but ``MemoryDeps`` and the helpers here.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from agentmesh.core.context import current_tenant
from agentmesh.core.db import query_timeout
from agentmesh.memory.deps import MemoryDeps

G = TypeVar("G", bound="RpcGroup")
R = TypeVar("R")


class RpcGroup:
    """A set of MemoryService RPCs over the shared dependencies."""

    def __init__(self, deps: MemoryDeps) -> None:
        self.deps = deps

    @staticmethod
    def tenant() -> str:
        """The caller's tenant, from the verified token (never from the request)."""
        return current_tenant()


def expensive(
    method: Callable[[G, Any, Any], Awaitable[R]],
) -> Callable[[G, Any, Any], Awaitable[R]]:
    """Marks an RPC as embedding or search work: it runs inside the per-tenant limit
    (``MemoryDeps.expensive``), so a tenant over it is RESOURCE_EXHAUSTED at once."""

    @functools.wraps(method)
    async def limited(self: G, request: Any, context: Any) -> R:
        with self.deps.expensive.hold(self.tenant()):
            return await method(self, request, context)

    return limited


def listing(
    method: Callable[[G, Any, Any], Awaitable[R]],
) -> Callable[[G, Any, Any], Awaitable[R]]:
    """Marks a list or search RPC: its queries get ``db_list_statement_timeout_ms``
    (:func:`agentmesh.core.db.query_timeout`), less than other statements, because a
    client's filter can make them expensive; past it the call is DEADLINE_EXCEEDED."""

    @functools.wraps(method)
    async def bounded(self: G, request: Any, context: Any) -> R:
        with query_timeout(self.deps.process.db_list_statement_timeout_ms):
            return await method(self, request, context)

    return bounded
