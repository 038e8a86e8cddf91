"""Least privilege in PostgreSQL (docs/adr/0018), against a real server and the real
roles: a service's login role reads and writes its own schema's tables and nothing
else; no DDL, no other service's schema. The roles are cluster-wide while migrations
run per database: several databases of one cluster migrate, even at once, and roll
back without breaking each other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from agentmesh.devstack.migrate import migrate_up, rollback_all
from agentmesh.devstack.postgres import EmbeddedPostgres
from agentmesh.devstack.roles import GROUP_ROLES, LOGIN_ROLES, create_login_roles, service_url

pytestmark = pytest.mark.integration

OTHER_DATABASE = "agentmesh_other"


@pytest.fixture
def postgres(pg_root: Path) -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(pg_root / "postgres")
    pg.start()
    try:
        migrate_up(pg.database_url)
        create_login_roles(pg)
        yield pg
    finally:
        pg.stop()


@pytest.fixture
async def owner(postgres: EmbeddedPostgres) -> AsyncIterator[asyncpg.Connection]:
    """The role that runs migrations (the schemas' owner)."""
    conn = await asyncpg.connect(postgres.database_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def memory_role(postgres: EmbeddedPostgres) -> AsyncIterator[asyncpg.Connection]:
    """The Memory service's login role."""
    conn = await asyncpg.connect(service_url(postgres, "memory"))
    try:
        yield conn
    finally:
        await conn.close()


async def refused(conn: asyncpg.Connection, sql: str) -> str:
    """Runs ``sql``, which must fail for lack of privilege; returns the message."""
    with pytest.raises(asyncpg.InsufficientPrivilegeError) as error:
        await conn.execute(sql)
    return str(error.value)


async def test_the_service_role_does_its_work(memory_role: asyncpg.Connection) -> None:
    assert await memory_role.fetchval("SELECT current_user") == LOGIN_ROLES["memory"]
    await memory_role.execute(
        "INSERT INTO memory.request_ids (tenant, method, request_id, expire_time)"
        " VALUES ('t', 'm', 'r', now() + interval '1 hour')"
    )
    updated = await memory_role.execute(
        "UPDATE memory.request_ids SET response = '\\x00' WHERE tenant = 't' AND request_id = 'r'"
    )
    assert updated == "UPDATE 1"
    assert await memory_role.fetchval("SELECT count(*) FROM memory.request_ids") == 1
    assert await memory_role.execute("DELETE FROM memory.request_ids") == "DELETE 1"
    # The pgvector types in `public` stay usable (the pool registers their codec).
    assert await memory_role.fetchval("SELECT '[1,2]'::vector::text") == "[1,2]"
    # Transaction-scoped settings and advisory locks, which the stores use.
    async with memory_role.transaction():
        await memory_role.execute("SELECT set_config('hnsw.ef_search', '40', true)")
        await memory_role.execute("SELECT pg_advisory_xact_lock(42)")


async def test_the_service_role_cannot_change_the_schema(
    memory_role: asyncpg.Connection, owner: asyncpg.Connection
) -> None:
    for sql in (
        "CREATE TABLE memory.intruder (id int)",
        "CREATE VIEW memory.intruder AS SELECT 1",
        "CREATE TABLE public.intruder (id int)",
        "CREATE SCHEMA intruder",
    ):
        assert "permission denied" in await refused(memory_role, sql), sql
    for sql in (
        "DROP TABLE memory.request_ids",
        "ALTER TABLE memory.request_ids ADD COLUMN intruder int",
        "ALTER TABLE memory.request_ids DISABLE ROW LEVEL SECURITY",
        "CREATE INDEX intruder ON memory.request_ids (expire_time)",
        "DROP INDEX memory.memories_embedding_hnsw",
        "ALTER INDEX memory.memories_embedding_hnsw SET (ef_construction = 8)",
    ):
        assert "must be owner" in await refused(memory_role, sql), sql
    assert "permission denied" in await refused(memory_role, "TRUNCATE memory.request_ids")
    # Not a member of anything beyond its group; owns nothing.
    assert not await owner.fetchval(
        "SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls FROM pg_roles"
        " WHERE rolname = $1",
        LOGIN_ROLES["memory"],
    )
    owned = await owner.fetchval(
        "SELECT (SELECT count(*) FROM pg_class WHERE relowner = r.oid)"
        " + (SELECT count(*) FROM pg_namespace WHERE nspowner = r.oid)"
        " FROM pg_roles r WHERE rolname = $1",
        LOGIN_ROLES["memory"],
    )
    assert owned == 0


async def test_a_role_cannot_read_another_services_schema(
    postgres: EmbeddedPostgres, owner: asyncpg.Connection, memory_role: asyncpg.Connection
) -> None:
    # A table a later migration adds to the job schema: covered by the default
    # privileges for the Job role, invisible to the Memory role.
    await owner.execute("CREATE TABLE job.records (id int PRIMARY KEY, note text)")
    await owner.execute("CREATE SEQUENCE job.record_ids")
    job_role = await asyncpg.connect(service_url(postgres, "job"))
    try:
        await job_role.execute("INSERT INTO job.records VALUES (1, 'mine')")
        assert await job_role.fetchval("SELECT note FROM job.records") == "mine"
        assert await job_role.fetchval("SELECT nextval('job.record_ids')") == 1
        for sql in ("SELECT * FROM memory.sessions", "SELECT * FROM memory.request_ids"):
            assert "permission denied for schema memory" in await refused(job_role, sql)
    finally:
        await job_role.close()
    for sql in ("SELECT * FROM job.records", "INSERT INTO job.records VALUES (2, 'x')"):
        assert "permission denied for schema job" in await refused(memory_role, sql)
    # Nor the migrations' bookkeeping.
    assert "permission denied" in await refused(memory_role, "DELETE FROM public.schema_migrations")


def _roles(pg: EmbeddedPostgres) -> set[str]:
    out = pg.psql("SELECT rolname FROM pg_roles WHERE rolname LIKE 'agentmesh%'")
    return set(out.split())


def test_databases_of_one_cluster_share_the_roles(postgres: EmbeddedPostgres) -> None:
    """Migrations of two databases at once both succeed; rolling one back leaves the
    other's grants (and so the roles) in place; the last one out drops the roles."""
    postgres.psql(f"CREATE DATABASE {OTHER_DATABASE}", database="postgres")
    third = "agentmesh_third"
    postgres.psql(f"CREATE DATABASE {third}", database="postgres")
    other_url = postgres.url(OTHER_DATABASE)
    with ThreadPoolExecutor(2) as pool:
        # The cluster already has the roles (the fixture migrated `agentmesh`); two
        # fresh databases migrate concurrently over them.
        list(pool.map(migrate_up, [other_url, postgres.url(third)]))
    assert set(GROUP_ROLES.values()) <= _roles(postgres)

    async def memory_role_counts(database: str) -> int:
        conn = await asyncpg.connect(service_url(postgres, "memory", database))
        try:
            count: int = await conn.fetchval("SELECT count(*) FROM memory.sessions")
            return count
        finally:
            await conn.close()

    assert asyncio.run(memory_role_counts(OTHER_DATABASE)) == 0

    rollback_all(postgres.database_url)
    rollback_all(postgres.url(third))
    # `agentmesh_other` still grants to the roles: they stay, and work there.
    assert set(GROUP_ROLES.values()) <= _roles(postgres)
    assert asyncio.run(memory_role_counts(OTHER_DATABASE)) == 0

    rollback_all(other_url)
    assert not set(GROUP_ROLES.values()) & _roles(postgres), "the last database out drops them"

    # And everything comes back.
    migrate_up(postgres.database_url)
    create_login_roles(postgres)
    assert asyncio.run(memory_role_counts(postgres.database)) == 0
