"""Helpers shared by the Memory component tests: the stub type, fresh ids, rich errors.

Import them as ``component.memory_helpers`` (the name mypy resolves too: mypy_path
has tests/). conftest.py registers this module for pytest's assertion rewriting, so
a failed ``assert`` here explains itself as it would inside a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, cast

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from agentmesh.core.server import start_server
from agentmesh.memory.app import build_memory
from agentmesh.v1 import memory_pb2_grpc
from component.conftest import Backends, memory_settings

# The async stub type exists only in the generated .pyi, hence the string alias.
Stub: TypeAlias = "memory_pb2_grpc.MemoryServiceAsyncStub"


# ------------------------------------------------------------------ servers


@contextlib.asynccontextmanager
async def serve_memory(backends: Backends, **overrides: str) -> AsyncIterator[Stub]:
    """Another Memory server on the same backends, with settings ``overrides``
    (``AGENTMESH_*`` variables), and a stub of it; stopped on exit."""
    config = memory_settings(backends, **overrides)
    running = await start_server(config.settings, await build_memory(*config))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield cast("Stub", memory_pb2_grpc.MemoryServiceStub(channel))
    finally:
        await running.stop(0)


HARD_DELETE: dict[str, str] = {
    "AGENTMESH_MEMORY_SESSION_PURGE_AFTER_S": "0",
    "AGENTMESH_MEMORY_JANITOR_INTERVAL_S": "0",
}
"""Settings of a server without soft delete: DeleteSession removes everything at once."""


# ------------------------------------------------------------------ fresh ids


def uid(length: int = 12) -> str:
    """A fresh id suffix: the server and database live for the whole test session."""
    return uuid.uuid4().hex[:length]


def unique(prefix: str = "s") -> str:
    """A fresh ``prefix-`` id: the database is shared by every test of the session."""
    return f"{prefix}-{uid()}"


# ------------------------------------------------------------------ messages


def struct(**values: Any) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


# ------------------------------------------------------------------ errors


async def expect_error(call: Awaitable[Any], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return caught.value


def violated_fields(error: grpc.aio.AioRpcError) -> set[str]:
    """The fields named by the BadRequest detail of a rich error status."""
    status = rpc_status.from_call(cast(grpc.Call, error))
    assert status is not None, "no google.rpc.Status details on the error"
    fields: set[str] = set()
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields.update(violation.field for violation in bad_request.field_violations)
    return fields


async def expect_invalid(call: Awaitable[Any], *fields: str) -> None:
    error = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT)
    assert set(fields) <= violated_fields(error), error.details()


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The gRPC error ``call`` raises, whatever its code."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def field_violations(call: Awaitable[Any]) -> dict[str, str]:
    """Expects INVALID_ARGUMENT; returns its BadRequest field violations by field."""
    error = await rpc_error(call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad_request) for detail in status.details)
    return {v.field: v.description for v in bad_request.field_violations}


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo detail of a failed call (its reason and domain)."""
    status = rpc_status.from_call(cast("grpc.Call", error))
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert any(detail.Unpack(info) for detail in status.details)
    return info


# ------------------------------------------------------------------ waiting, ports, metrics


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float) -> None:
    """Waits until ``check()`` is true, at most ``timeout_s`` (then fails naming ``what``)."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def agent_runs(agent: str, outcome: str) -> float:
    """``agentmesh_agent_runs_total`` of this process for ``agent`` and ``outcome``."""
    value = REGISTRY.get_sample_value(
        "agentmesh_agent_runs_total", {"agent": agent, "outcome": outcome}
    )
    return value or 0.0
