"""LangGraph's own checkpointer conformance suite against the real Memory service.

``AgentmeshSaver`` talks gRPC to the in-process Memory server (real PostgreSQL). Every
capability runs as its own pytest case on a fresh saver of a fresh tenant, so suites
cannot see each other's threads (the spec reuses thread ids such as ``thread-0``).
Nothing is skipped: the saver implements every capability the suite knows.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES, Capability
from langgraph.checkpoint.conformance.initializer import RegisteredCheckpointer
from langgraph.checkpoint.conformance.report import CapabilityResult

from agentmesh.core.auth import mint_token
from agentmesh.core.server import RunningServer
from agentmesh.langgraph import AgentmeshSaver

# `component.conftest`, not `conftest`: the name mypy resolves too (mypy_path has tests/).
from component.conftest import SECRET


def _registered(port: int) -> RegisteredCheckpointer:
    @checkpointer_test(name="AgentmeshSaver")
    async def agentmesh_saver() -> AsyncIterator[AgentmeshSaver]:
        tenant = f"conformance-{uuid.uuid4().hex[:12]}"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield AgentmeshSaver(channel, token=mint_token(SECRET, tenant))

    registered: RegisteredCheckpointer = agentmesh_saver
    return registered


@pytest.mark.parametrize("capability", sorted(c.value for c in ALL_CAPABILITIES))
async def test_langgraph_conformance(memory_server: RunningServer, capability: str) -> None:
    report = await validate(_registered(memory_server.port), capabilities={capability})
    result: CapabilityResult = report.results[capability]
    assert result.detected, f"{capability}: AgentmeshSaver does not implement it"
    assert result.passed is True, "\n".join(result.failures)
    assert result.tests_failed == 0
    assert result.tests_passed > 0


def test_every_capability_is_covered() -> None:
    """A new capability in a newer suite must show up here, not pass silently."""
    assert {c.value for c in Capability} == {c.value for c in ALL_CAPABILITIES}
