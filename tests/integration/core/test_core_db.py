"""``create_pool`` against a real embedded PostgreSQL reached over its unix socket."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest
from pgvector import Vector

from agentmesh.core.db import DatabaseProbe, QueryTimeoutError, create_pool, query_timeout
from agentmesh.core.errors import InvalidArgument
from agentmesh.core.outages import as_domain_error, as_unavailable
from agentmesh.core.settings import ConfigError, Settings
from agentmesh.devstack.postgres import EmbeddedPostgres

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A private PostgreSQL, started the way the dev stack starts it; its URL points at
    the socket: ``postgresql://…@/postgres?host=…``.

    Outside pytest's basetemp: see ``stack_root`` in tests/conftest.py for why.
    """
    root = Path(tempfile.mkdtemp(prefix="agentmesh-core-db-"))
    server = EmbeddedPostgres(root / "data", database="postgres")
    try:
        server.start()
        yield server.database_url
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
async def vector_db(postgres_url: str) -> str:
    """A database with the pgvector extension, as the migrations leave it."""
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute("DROP DATABASE IF EXISTS core_vectors")
        await admin.execute("CREATE DATABASE core_vectors")
    finally:
        await admin.close()
    url = postgres_url.replace("/postgres?", "/core_vectors?")
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
    finally:
        await connection.close()
    return url


def settings_for(url: str) -> Settings:
    return Settings.from_env(
        {
            "AGENTMESH_DATABASE_URL": url,
            "AGENTMESH_DB_POOL_MIN_SIZE": "2",
            "AGENTMESH_DB_POOL_MAX_SIZE": "3",
            "AGENTMESH_DB_STATEMENT_TIMEOUT_MS": "1500",
        },
        service="memory",
    )


async def test_pool_round_trips_vectors_on_every_connection(vector_db: str) -> None:
    # The URL reaches PostgreSQL through its unix socket directory.
    _, socket_dir = vector_db.split("?host=")
    assert os.path.isdir(socket_dir)
    pool = await create_pool(settings_for(vector_db))
    try:
        await pool.fetchval("SELECT 1")
        await pool.execute("CREATE TABLE items (id int PRIMARY KEY, embedding vector(3))")
        # Hold every connection at once, so each one must have the codec registered.
        connections = [await pool.acquire() for _ in range(3)]
        try:
            for i, connection in enumerate(connections):
                await connection.execute(
                    "INSERT INTO items VALUES ($1, $2)", i, [1.5, 2.0, float(i)]
                )
                stored = await connection.fetchval("SELECT embedding FROM items WHERE id = $1", i)
                assert isinstance(stored, Vector)
                assert stored.to_list() == [1.5, 2.0, float(i)]
        finally:
            for connection in connections:
                await pool.release(connection)
        nearest = await pool.fetchval(
            "SELECT id FROM items ORDER BY embedding <-> $1 LIMIT 1", Vector([1.5, 2.0, 2.1])
        )
        assert nearest == 2
    finally:
        await pool.close()


async def test_pool_connections_carry_timeout_and_application_name(vector_db: str) -> None:
    pool = await create_pool(settings_for(vector_db))
    try:
        assert await pool.fetchval("SHOW statement_timeout") == "1500ms"
        assert await pool.fetchval("SELECT current_setting('application_name')") == (
            "agentmesh-memory"
        )
        with pytest.raises(asyncpg.QueryCanceledError):
            await pool.execute("SELECT pg_sleep(5)")
    finally:
        await pool.close()


async def test_database_without_pgvector_fails_with_a_clear_message(postgres_url: str) -> None:
    with pytest.raises(ConfigError, match="run the migrations"):
        await create_pool(settings_for(postgres_url))


async def test_pool_requires_a_database_url() -> None:
    with pytest.raises(ConfigError, match="AGENTMESH_DATABASE_URL"):
        await create_pool(Settings.from_env({}, service="memory"))


async def _raised(url: str, sql: str) -> BaseException:
    pool = await create_pool(settings_for(url))
    try:
        with pytest.raises(asyncpg.PostgresError) as raised:
            await pool.fetchval(sql)
        error: BaseException = raised.value
        return error
    finally:
        await pool.close()


async def test_a_query_over_its_statement_timeout_is_deadline_exceeded_not_unavailable(
    vector_db: str,
) -> None:
    # The pool's statement_timeout is 1.5 s (settings_for): the query is cancelled.
    error = await _raised(vector_db, "SELECT pg_sleep(5)")
    mapped = as_domain_error(error)
    assert mapped is not None
    assert mapped.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert mapped.reason == "QUERY_TIMEOUT"
    assert as_unavailable(error) is None  # not an outage: no retry, no ejection


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'not a number'::int",  # invalid text representation
        "SELECT 99999999999::int",  # out of range
        "SELECT make_date(0, 1, 1)::text",  # date out of range
        "SELECT convert_from('\\x00'::bytea, 'UTF8')",  # NUL in text
        "SELECT 1 / 0",  # division by zero
    ],
)
async def test_a_value_postgresql_refuses_is_invalid_argument(vector_db: str, sql: str) -> None:
    error = await _raised(vector_db, sql)
    mapped = as_domain_error(error)
    assert isinstance(mapped, InvalidArgument), repr(error)
    assert mapped.violations[0][0] == "request"


async def test_a_busy_pool_answers_database_busy_and_health_still_answers(vector_db: str) -> None:
    settings = Settings.from_env(
        {
            "AGENTMESH_DATABASE_URL": vector_db,
            "AGENTMESH_DB_POOL_MIN_SIZE": "1",
            "AGENTMESH_DB_POOL_MAX_SIZE": "1",
            "AGENTMESH_DB_ACQUIRE_TIMEOUT_MS": "200",
        },
        service="memory",
    )
    pool = await create_pool(settings)
    probe = DatabaseProbe(settings)
    try:
        held = await pool.acquire()  # the one connection, busy with a slow query
        try:
            for call in (lambda: pool.fetchval("SELECT 1"), pool.acquire):
                with pytest.raises(TimeoutError) as raised:
                    await call()
                mapped = as_domain_error(raised.value)
                assert mapped is not None
                assert mapped.code is grpc.StatusCode.UNAVAILABLE
                assert mapped.reason == "DATABASE_BUSY"
            await probe()  # its own connection: the busy pool does not fail health
        finally:
            await pool.release(held)
        assert await pool.fetchval("SELECT 1") == 1
    finally:
        await probe.close()
        await pool.close()


async def test_the_database_probe_reconnects_after_a_failure(vector_db: str) -> None:
    probe = DatabaseProbe(settings_for(vector_db))
    admin = await asyncpg.connect(vector_db)
    try:
        await probe()
        connection = probe._connection
        assert connection is not None
        # The server ends the probe's session, as a restart or a failover would.
        await admin.fetchval("SELECT pg_terminate_backend($1)", connection.get_server_pid())
        # The next probe fails at most once (if the client has not noticed the close
        # yet); the one after it answers on a fresh connection.
        try:
            await probe()
        except Exception:  # whichever error asyncpg reports a dead session with
            await probe()
        assert probe._connection is not None
        assert probe._connection is not connection
    finally:
        await admin.close()
        await probe.close()


async def test_a_query_inside_query_timeout_is_cancelled_as_a_query_timeout(
    vector_db: str,
) -> None:
    pool = await create_pool(settings_for(vector_db))
    try:
        with query_timeout(200), pytest.raises(QueryTimeoutError) as raised:
            await pool.fetch("SELECT pg_sleep(5)")
        mapped = as_domain_error(raised.value)
        assert mapped is not None
        assert mapped.code is grpc.StatusCode.DEADLINE_EXCEEDED
        assert mapped.reason == "QUERY_TIMEOUT"
        assert as_unavailable(raised.value) is None
        # Outside the block the connection's own timeout applies again, and the
        # connection the cancelled query used still works.
        assert await pool.fetchval("SELECT 1") == 1
        assert await pool.fetch("SELECT pg_sleep(0.3)") is not None
        # 0 means no shorter limit.
        with query_timeout(0):
            assert len(await pool.fetch("SELECT pg_sleep(0.3)")) == 1
    finally:
        await pool.close()
