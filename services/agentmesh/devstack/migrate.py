"""Apply, roll back and list the SQL migrations in `migrations/` with dbmate.

Migrations are plain numbered dbmate files (`-- migrate:up` / `-- migrate:down`); dbmate
records applied versions in `public.schema_migrations`. Schema dumps are off
(`--no-dump-schema`): a dump runs `pg_dump` from PATH, and Debian's pg_dump 15 refuses
the embedded 18 server; the migrations themselves are the schema's source of truth.

CLI (used by `make migrate`), reading `AGENTMESH_DATABASE_URL`:

    python -m agentmesh.devstack.migrate up|down-all|status
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from agentmesh.core.settings import ENV_PREFIX, Check, load_settings
from agentmesh.devstack._proc import find_executable
from agentmesh.devstack.paths import migrations_dir

DATABASE_URL_ENV: Final = "AGENTMESH_DATABASE_URL"
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

    database_url: str | None = None
    """``AGENTMESH_DATABASE_URL``: the database to migrate."""

    def checks(self) -> list[Check]:
        """Nothing to range-check: the URL is checked by connecting."""
        return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agentmesh.devstack.migrate",
        description=f"Apply or roll back migrations/ against ${DATABASE_URL_ENV}.",
    )
    parser.add_argument("command", choices=["up", "down-all", "status"])
    parser.add_argument(
        "--migrations-dir", type=Path, default=None, help="default: <repo>/migrations"
    )
    args = parser.parse_args(argv)
    url = load_settings(_MigrateSettings, prefix=ENV_PREFIX).database_url
    if not url:
        parser.error(
            f"{DATABASE_URL_ENV} is not set (e.g. postgresql://postgres@/agentmesh?host=<dir>)"
        )
    try:
        if args.command == "up":
            sys.stdout.write(migrate_up(url, migrations=args.migrations_dir))
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
    except MigrationError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
