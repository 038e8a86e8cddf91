"""Component fixtures: one real service over real gRPC, with its real backends.

The Memory service runs in-process (its builder, ``start_server``, a real socket)
against a private embedded PostgreSQL with all migrations applied and a private
Redis, started once per test session. It connects as its own login role (read and
write of schema ``memory``, no DDL), as in production; the tests' direct SQL access
uses the owner.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, cast

import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest
import redis.asyncio

from agentmesh.core.auth import mint_token
from agentmesh.core.server import RunningServer, start_server
from agentmesh.core.settings import Settings
from agentmesh.devstack.migrate import migrate_up
from agentmesh.devstack.postgres import EmbeddedPostgres
from agentmesh.devstack.redis import RedisServer
from agentmesh.devstack.roles import create_login_roles, service_url
from agentmesh.memory.app import build_memory
from agentmesh.memory.settings import MemorySettings
from agentmesh.v1 import memory_pb2_grpc

SECRET = "component-memory-secret-of-32-bytes-min"

Metadata = tuple[tuple[str, str], ...]

# The shared helpers of the test modules assert too: have pytest explain their failures.
pytest.register_assert_rewrite(
    "component.memory_helpers", "component.job_helpers", "component.conductor_helpers"
)


def credentials(tenant: str) -> Metadata:
    """The call metadata of ``tenant``: a bearer token signed with ``SECRET``."""
    return (("authorization", f"Bearer {mint_token(SECRET, tenant)}"),)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Backends:
    """The private PostgreSQL and Redis of the component tests."""

    database_url: str
    """As the owner of the schemas (the superuser): the tests' direct SQL access."""
    memory_url: str
    """As the Memory service's login role: what the service under test connects as."""
    redis_url: str
    job_url: str = ""
    """As the Job service's login role (the Job service and its workers)."""
    conductor_url: str = ""
    """As the Conductor service's login role."""


@pytest.fixture(scope="session")
def backends() -> Iterator[Backends]:
    """Embedded PostgreSQL (migrated) and Redis, outside pytest's basetemp (see
    ``stack_root`` in tests/conftest.py for why)."""
    root = Path(tempfile.mkdtemp(prefix="agentmesh-component-"))
    postgres = EmbeddedPostgres(root / "postgres")
    cache = RedisServer(root / "redis", _free_port(), appendonly=False)
    try:
        postgres.start()
        migrate_up(postgres.database_url)
        create_login_roles(postgres)
        cache.start()
        yield Backends(
            database_url=postgres.database_url,
            memory_url=service_url(postgres, "memory"),
            job_url=service_url(postgres, "job"),
            conductor_url=service_url(postgres, "conductor"),
            redis_url=cache.url,
        )
    finally:
        cache.stop()
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)


class MemoryConfig(NamedTuple):
    """What ``build_memory`` takes: the shared settings and the Memory service's own
    (``build_memory(*config)``)."""

    settings: Settings
    memory: MemorySettings


def memory_settings(backends: Backends, **overrides: str) -> MemoryConfig:
    """Settings of an in-process Memory service on a free port; ``overrides`` are
    ``AGENTMESH_*`` variables, shared or ``AGENTMESH_MEMORY_*`` alike.

    The indexer is off unless a test turns it on: the tests share one database, and
    a test that reads imported memories before they are indexed must not find them
    indexed by another test's server meanwhile."""
    environ = {
        "AGENTMESH_MEMORY_INDEXER_INTERVAL_S": "0",
        "AGENTMESH_GRPC_PORT": "0",
        "AGENTMESH_METRICS_PORT": "0",
        "AGENTMESH_AUTH_HS256_SECRET": SECRET,
        "AGENTMESH_DATABASE_URL": backends.memory_url,
        "AGENTMESH_REDIS_URL": backends.redis_url,
        **overrides,
    }
    return MemoryConfig(
        Settings.from_env(environ, service="memory"), MemorySettings.from_env(environ)
    )


@pytest.fixture(scope="session")
async def memory_server(backends: Backends) -> AsyncIterator[RunningServer]:
    """The Memory service with default settings."""
    config = memory_settings(backends)
    running = await start_server(config.settings, await build_memory(*config))
    try:
        yield running
    finally:
        await running.stop(0)


@pytest.fixture(scope="session")
async def memory(
    memory_server: RunningServer,
) -> AsyncIterator[memory_pb2_grpc.MemoryServiceAsyncStub]:
    """An async stub of the Memory service."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{memory_server.port}") as channel:
        # mypy-protobuf types the same runtime stub as AsyncStub on an aio channel.
        yield cast(
            "memory_pb2_grpc.MemoryServiceAsyncStub", memory_pb2_grpc.MemoryServiceStub(channel)
        )


@pytest.fixture(scope="session")
def tenant_a() -> Metadata:
    """Credentials of tenant ``tenant-a``."""
    return credentials("tenant-a")


@pytest.fixture(scope="session")
def tenant_b() -> Metadata:
    """Credentials of tenant ``tenant-b``: must never see tenant-a's data."""
    return credentials("tenant-b")


@pytest.fixture(scope="session")
async def db(backends: Backends) -> AsyncIterator[asyncpg.Pool]:
    """Direct SQL access, to check that a failed call left nothing half-written."""
    pool = await asyncpg.create_pool(backends.database_url, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture(scope="session")
async def redis_client(backends: Backends) -> AsyncIterator[redis.asyncio.Redis]:
    """Direct Redis access."""
    client = redis.asyncio.Redis.from_url(backends.redis_url)
    try:
        yield client
    finally:
        await client.aclose()
