"""Health is real: Memory and Job follow PostgreSQL without being restarted."""

from __future__ import annotations

import time

from agentmesh.devstack.stack import DevStack


def _wait_for(stack: DevStack, service: str, status: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    seen = ""
    while time.monotonic() < deadline:
        seen = stack.health(service)
        if seen == status:
            return
        time.sleep(0.2)
    raise AssertionError(f"{service} health is {seen!r}, expected {status!r}")


def test_stopping_postgres_turns_memory_not_serving_and_back(stack: DevStack) -> None:
    pids = {name: child.pid for name, child in stack.children.items()}
    _wait_for(stack, "memory", "SERVING")
    stack.stop_postgres()
    try:
        _wait_for(stack, "memory", "NOT_SERVING")
        _wait_for(stack, "job", "NOT_SERVING")
        assert stack.health("agent") == "SERVING"  # no database, no cascade
    finally:
        stack.start_postgres()
    _wait_for(stack, "memory", "SERVING")
    _wait_for(stack, "job", "SERVING")
    _wait_for(stack, "memory", "SERVING")
    assert {name: child.pid for name, child in stack.children.items()} == pids
    assert stack.exited_children() == {}
