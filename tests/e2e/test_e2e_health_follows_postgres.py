"""Health is real: Memory and Job follow PostgreSQL without being restarted."""

from __future__ import annotations

import time

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agentmesh.devstack.stack import DevStack
from agentmesh.v1 import memory_pb2, memory_pb2_grpc


def _wait_for(stack: DevStack, service: str, status: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    seen = ""
    while time.monotonic() < deadline:
        seen = stack.health(service)
        if seen == status:
            return
        time.sleep(0.2)
    raise AssertionError(f"{service} health is {seen!r}, expected {status!r}")


def _get_session_code(
    stack: DevStack, metadata: tuple[tuple[str, str], ...]
) -> tuple[grpc.StatusCode, grpc.RpcError | None]:
    with grpc.insecure_channel(stack.endpoints["memory"]) as channel:
        stub = memory_pb2_grpc.MemoryServiceStub(channel)
        try:
            stub.GetSession(
                memory_pb2.GetSessionRequest(name="sessions/missing"), metadata=metadata, timeout=10
            )
        except grpc.RpcError as exc:
            return exc.code(), exc
    return grpc.StatusCode.OK, None


def test_stopping_postgres_turns_memory_not_serving_and_back(
    stack: DevStack, auth_metadata: tuple[tuple[str, str], ...]
) -> None:
    pids = {name: child.pid for name, child in stack.children.items()}
    _wait_for(stack, "memory", "SERVING")
    stack.stop_postgres()
    try:
        _wait_for(stack, "memory", "NOT_SERVING")
        _wait_for(stack, "job", "NOT_SERVING")
        assert stack.health("agent") == "SERVING"  # no database, no cascade
        # A call that needs the database says UNAVAILABLE with retry advice, not INTERNAL.
        code, error = _get_session_code(stack, auth_metadata)
        assert code == grpc.StatusCode.UNAVAILABLE, error
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        assert status is not None
        retry = error_details_pb2.RetryInfo()
        assert any(detail.Unpack(retry) for detail in status.details)
    finally:
        stack.start_postgres()
    _wait_for(stack, "memory", "SERVING")
    _wait_for(stack, "job", "SERVING")
    _wait_for(stack, "memory", "SERVING")
    assert _get_session_code(stack, auth_metadata)[0] == grpc.StatusCode.NOT_FOUND
    assert {name: child.pid for name, child in stack.children.items()} == pids
    assert stack.exited_children() == {}
