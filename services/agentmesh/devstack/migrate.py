"""Apply, roll back and list the SQL migrations in `migrations/` with dbmate.

Migrations are plain numbered dbmate files (`-- migrate:up` / `-- migrate:down`); dbmate
records applied versions in `public.schema_migrations`. Schema dumps are off
(`--no-dump-schema`): a dump runs `pg_dump` from PATH, and Debian's pg_dump 15 refuses
the embedded 18 server; the migrations themselves are the schema's source of truth.

Migrations run as the owner of the schemas, never as a service's role (docs/adr/0018):
the CLI reads `AGENTMESH_MIGRATE_DATABASE_URL`, falling back to `AGENTMESH_DATABASE_URL`
when it is unset (one URL for both on a database without separate roles).

`up` also builds the Memory service's HNSW index with the configured parameters
(`AGENTMESH_MEMORY_HNSW_M`, `AGENTMESH_MEMORY_HNSW_EF_CONSTRUCTION`) when the index
differs: index builds are DDL, which the services may not run; a Memory service whose
settings do not match the index refuses to start and names this command.

CLI (used by `make migrate` and the Kubernetes Job `migrate`):

    python -m agentmesh.devstack.migrate up|down-all|status
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]

from agentmesh.core.settings import ENV_PREFIX, Check, ConfigError, load_settings
from agentmesh.devstack._proc import find_executable
from agentmesh.devstack.paths import migrations_dir
from agentmesh.memory.settings import MemorySettings
from agentmesh.memory.stores.memory_index import ensure_hnsw_index

DATABASE_URL_ENV: Final = "AGENTMESH_DATABASE_URL"
MIGRATE_DATABASE_URL_ENV: Final = "AGENTMESH_MIGRATE_DATABASE_URL"
_STATUS_LINE_RE: Final = re.compile(r"^\[(?P<mark>[X ])\] (?P<file>\S+)$")
_TIMEOUT_S: Final = 120.0


class MigrationError(RuntimeError):
    """dbmate failed; the message carries its output."""


@dataclass(frozen=True)
class MigrationStatus:
    """Migration files, by file name, split by whether they are applied."""

    applied: tuple[str, ...]
    pending: tuple[str, ...]


def to_dbmate_url(database_url: str) -> str:
    """Translate a libpq/asyncpg URL into the form dbmate's PostgreSQL driver expects.

    libpq names the unix-socket directory `?host=/dir`; dbmate wants `?socket=/dir`,
    the `postgres://` scheme, and an explicit `sslmode=disable` (TLS over a unix socket
    is refused). TCP URLs pass through with only the scheme normalised.
    """
    parts = urlsplit(database_url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"not a PostgreSQL URL: {database_url!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    socket_dir = next((v for k, v in query if k == "host" and v.startswith("/")), None)
    if socket_dir is not None:
        query = [(k, v) for k, v in query if k != "host"]
        query.insert(0, ("socket", socket_dir))
        if not any(k == "sslmode" for k, _ in query):
            query.append(("sslmode", "disable"))
    return urlunsplit(("postgres", parts.netloc, parts.path, urlencode(query, safe="/"), ""))


def _dbmate(
    database_url: str, *args: str, migrations: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    argv = [
        str(find_executable("dbmate")),
        "--url",
        to_dbmate_url(database_url),
        "--migrations-dir",
        str(migrations or migrations_dir()),
        "--no-dump-schema",
        # Replicas starting at once (k8s) must not apply the same migration twice.
        "--migration-lock",
        # dbmate reads ./.env by default; an unrelated .env in the caller's cwd must not
        # change what it does.
        "--env-file",
        os.devnull,
        *args,
    ]
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise MigrationError(f"dbmate {' '.join(args)} timed out after {_TIMEOUT_S:.0f} s") from exc
    if check and result.returncode != 0:
        raise MigrationError(
            f"dbmate {' '.join(args)} failed (exit {result.returncode}):\n"
            f"{result.stdout}{result.stderr}".strip()
        )
    return result


def migrate_up(database_url: str, *, migrations: Path | None = None) -> str:
    """Create the database if needed and apply every pending migration; returns dbmate's log."""
    return _dbmate(database_url, "up", migrations=migrations).stdout


async def build_indexes(database_url: str, memory: MemorySettings) -> bool:
    """The migration step after the SQL files: (re)build the Memory HNSW index when it
    is missing or differs from ``memory``'s parameters; returns whether it built."""
    try:
        conn = await asyncpg.connect(database_url)
        try:
            built: bool = await ensure_hnsw_index(conn, memory)
            return built
        finally:
            await conn.close()
    except (OSError, asyncpg.PostgresError) as exc:
        raise MigrationError(f"building the memories HNSW index failed: {exc}") from exc


def migrate(database_url: str, memory: MemorySettings, *, migrations: Path | None = None) -> str:
    """Everything `up` does: the SQL migrations, then the index builds; returns a log."""
    log = migrate_up(database_url, migrations=migrations)
    if asyncio.run(build_indexes(database_url, memory)):
        log += (
            f"Built memory.memories_embedding_hnsw (m = {memory.hnsw_m},"
            f" ef_construction = {memory.hnsw_ef_construction})\n"
        )
    return log


def status(database_url: str, *, migrations: Path | None = None) -> MigrationStatus:
    result = _dbmate(database_url, "status", migrations=migrations)
    applied: list[str] = []
    pending: list[str] = []
    for line in result.stdout.splitlines():
        match = _STATUS_LINE_RE.match(line.strip())
        if match:
            (applied if match["mark"] == "X" else pending).append(match["file"])
    return MigrationStatus(applied=tuple(applied), pending=tuple(pending))


def rollback_all(database_url: str, *, migrations: Path | None = None) -> int:
    """Roll back every applied migration, newest first; returns how many were rolled back.

    dbmate has no "rollback all", so this rolls back one at a time, bounded by the number
    of applied migrations counted before starting.
    """
    count = len(status(database_url, migrations=migrations).applied)
    for _ in range(count):
        _dbmate(database_url, "rollback", migrations=migrations)
    remaining = status(database_url, migrations=migrations).applied
    if remaining:
        raise MigrationError(f"still applied after rolling back {count}: {', '.join(remaining)}")
    return count


@dataclass(frozen=True)
class _MigrateSettings:
    """What the migration command reads from the environment."""

    migrate_database_url: str | None = None
    """``AGENTMESH_MIGRATE_DATABASE_URL``: the database to migrate, as the role that owns
    the schemas (creates tables, indexes and roles)."""

    database_url: str | None = None
    """``AGENTMESH_DATABASE_URL``: used when the migration URL is unset."""

    @property
    def url(self) -> str | None:
        return self.migrate_database_url or self.database_url

    def checks(self) -> list[Check]:
        """Nothing to range-check: the URL is checked by connecting."""
        return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agentmesh.devstack.migrate",
        description=(
            f"Apply or roll back migrations/ against ${MIGRATE_DATABASE_URL_ENV} "
            f"(else ${DATABASE_URL_ENV}), as the owner of the schemas."
        ),
    )
    parser.add_argument("command", choices=["up", "down-all", "status"])
    parser.add_argument(
        "--migrations-dir", type=Path, default=None, help="default: <repo>/migrations"
    )
    args = parser.parse_args(argv)
    url = load_settings(_MigrateSettings, prefix=ENV_PREFIX).url
    if not url:
        parser.error(
            f"neither {MIGRATE_DATABASE_URL_ENV} nor {DATABASE_URL_ENV} is set "
            "(e.g. postgresql://postgres@/agentmesh?host=<dir>)"
        )
    try:
        if args.command == "up":
            memory = MemorySettings.from_env()
            sys.stdout.write(migrate(url, memory, migrations=args.migrations_dir))
        elif args.command == "down-all":
            count = rollback_all(url, migrations=args.migrations_dir)
            print(f"rolled back {count} migration(s)")
        else:
            st = status(url, migrations=args.migrations_dir)
            for name in st.applied:
                print(f"[X] {name}")
            for name in st.pending:
                print(f"[ ] {name}")
            print(f"applied: {len(st.applied)}, pending: {len(st.pending)}")
    except (MigrationError, ConfigError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
