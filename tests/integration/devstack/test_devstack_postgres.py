"""EmbeddedPostgres: start, stop and start again on the same data dir keeps the data."""

from __future__ import annotations

from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from agentmesh.devstack._proc import pid_alive, wait_until
from agentmesh.devstack.postgres import EmbeddedPostgres

pytestmark = pytest.mark.integration


async def test_restart_on_same_data_dir_keeps_data(pg_root: Path) -> None:
    pg = EmbeddedPostgres(pg_root / "postgres")
    pg.start()
    try:
        first_pid = pg.pid
        assert first_pid is not None
        assert pg.database_url.startswith("postgresql://postgres@/agentmesh?host=/")
        # The URL is what the services get: asyncpg must accept it as is.
        conn = await asyncpg.connect(pg.database_url)
        try:
            await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('x')")
        finally:
            await conn.close()

        pg.stop()
        assert pg.pid is None
        wait_until(lambda: not pid_alive(first_pid), timeout_s=5.0, what="postmaster exit")
        assert not (pg.socket_dir / ".s.PGSQL.5432").exists()

        pg.start()
        assert pg.pid not in (None, first_pid)
        assert pg.psql("SELECT v FROM kept") == "x"
        # Starting an already running server adopts it instead of failing.
        pg.start()
        assert pg.psql("SELECT count(*) FROM pg_extension WHERE extname = 'vector'") == "0"
        # pgvector ships with the wheel's server.
        pg.psql("CREATE EXTENSION vector")
        assert pg.psql("SELECT '[1,2]'::vector <-> '[1,3]'::vector") == "1"
    finally:
        pg.stop()
    assert pg.pid is None


def test_long_data_dir_gets_a_short_socket_dir(pg_root: Path) -> None:
    deep = pg_root / ("d" * 60) / ("e" * 60) / "postgres"
    pg = EmbeddedPostgres(deep)
    assert pg.socket_dir != pg.data_dir
    assert len(str(pg.socket_dir / ".s.PGSQL.5432")) < 108
    pg.start()
    try:
        assert pg.psql("SELECT 1") == "1"
    finally:
        pg.stop()
