"""The migrations apply to an empty database, roll back completely, and apply again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agentmesh.devstack import paths
from agentmesh.devstack.migrate import main, migrate_up, rollback_all, status, to_dbmate_url
from agentmesh.devstack.postgres import EmbeddedPostgres

pytestmark = pytest.mark.integration

SERVICE_SCHEMAS = ("conductor", "job", "memory")


@pytest.fixture
def postgres(pg_root: Path) -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(pg_root / "postgres")
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


def schemas(pg: EmbeddedPostgres) -> set[str]:
    out = pg.psql("SELECT nspname FROM pg_namespace")
    return set(out.split()) & set(SERVICE_SCHEMAS)


def has_vector(pg: EmbeddedPostgres) -> bool:
    return pg.psql("SELECT count(*) FROM pg_extension WHERE extname = 'vector'") == "1"


def test_up_down_up(postgres: EmbeddedPostgres) -> None:
    files = sorted(p.name for p in paths.migrations_dir().glob("*.sql"))
    assert files, "no migrations found"
    url = postgres.database_url
    assert status(url).pending == tuple(files)

    migrate_up(url)
    assert status(url).applied == tuple(files)
    assert status(url).pending == ()
    assert schemas(postgres) == set(SERVICE_SCHEMAS)
    assert has_vector(postgres)

    assert rollback_all(url) == len(files)
    assert status(url).applied == ()
    assert schemas(postgres) == set()
    assert not has_vector(postgres)

    migrate_up(url)
    assert status(url).applied == tuple(files)
    assert schemas(postgres) == set(SERVICE_SCHEMAS)
    # Applying again is a no-op.
    migrate_up(url)
    assert status(url).applied == tuple(files)


def test_cli_reads_the_database_url(
    postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AGENTMESH_DATABASE_URL", postgres.database_url)
    assert main(["up"]) == 0
    assert main(["status"]) == 0
    assert "pending: 0" in capsys.readouterr().out
    monkeypatch.delenv("AGENTMESH_DATABASE_URL")
    with pytest.raises(SystemExit):
        main(["status"])


def test_cli_prefers_the_migration_url(
    postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The services' URL (a role that may not run DDL) is not what migrations use.
    monkeypatch.setenv("AGENTMESH_DATABASE_URL", "postgresql://nobody@127.0.0.1:9/agentmesh")
    monkeypatch.setenv("AGENTMESH_MIGRATE_DATABASE_URL", postgres.database_url)
    assert main(["up"]) == 0
    assert main(["status"]) == 0
    assert "pending: 0" in capsys.readouterr().out


def test_up_builds_the_hnsw_index_with_the_memory_settings(
    postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def index_options() -> str:
        return postgres.psql(
            "SELECT array_to_string(reloptions, ',') FROM pg_class"
            " WHERE relname = 'memories_embedding_hnsw'"
        )

    monkeypatch.setenv("AGENTMESH_MIGRATE_DATABASE_URL", postgres.database_url)
    assert main(["up"]) == 0
    assert index_options() == "m=16,ef_construction=64"
    assert "Built" not in capsys.readouterr().out
    monkeypatch.setenv("AGENTMESH_MEMORY_HNSW_M", "8")
    assert main(["up"]) == 0  # nothing left to migrate: only the index changes
    assert "Built memory.memories_embedding_hnsw (m = 8" in capsys.readouterr().out
    assert index_options() == "m=8,ef_construction=64"
    monkeypatch.setenv("AGENTMESH_MEMORY_HNSW_M", "1")
    assert main(["up"]) == 1  # a setting out of range is refused, named
    assert "AGENTMESH_MEMORY_HNSW_M" in capsys.readouterr().err


def test_dbmate_url_translation(tmp_path: Path) -> None:
    assert (
        to_dbmate_url(f"postgresql://postgres@/agentmesh?host={tmp_path}")
        == f"postgres://postgres@/agentmesh?socket={tmp_path}&sslmode=disable"
    )
    assert (
        to_dbmate_url("postgresql://u:p@db:5432/agentmesh?sslmode=require")
        == "postgres://u:p@db:5432/agentmesh?sslmode=require"
    )
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        to_dbmate_url("mysql://x@/y")
