"""The processes the Memory bench measures: PostgreSQL, Redis, the service, the raw echo, Envoy."""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agentmesh.bench.memory.options import (
    DEFAULT_EF_SEARCH,
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    PG_SETTINGS,
)
from agentmesh.bench.procs import BenchError, bench_env, proc_cpu_s, stop_all
from agentmesh.bench.suite import BenchOptions
from agentmesh.devstack import paths
from agentmesh.devstack._proc import ChildProcess, wait_port_free, wait_until
from agentmesh.devstack.envoy_config import SERVICE_NAMES, dev_values, render_envoy_config
from agentmesh.devstack.envoy_process import EnvoyProxy
from agentmesh.devstack.postgres import EmbeddedPostgres
from agentmesh.devstack.redis import RedisServer
from agentmesh.devstack.roles import service_url
from agentmesh.devstack.stack import StackPorts, check_health
from agentmesh.memory.app import SERVICE_NAME as MEMORY_SERVICE


@dataclass
class Stack:
    """Everything this bench started, stopped by PID in `close()`."""

    work: Path
    ports: StackPorts
    secret: str
    postgres: EmbeddedPostgres
    redis: RedisServer
    memory: ChildProcess | None = None
    echo: ChildProcess | None = None
    envoy: EnvoyProxy | None = None
    ef_search: int = DEFAULT_EF_SEARCH
    starts: int = 0

    @property
    def memory_address(self) -> str:
        return f"127.0.0.1:{self.ports.memory}"

    def memory_env(
        self, ef_search: int, *, embedder: str = "hash", extra: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        return bench_env(
            {
                "AGENTMESH_ENV": "dev",
                "AGENTMESH_GRPC_HOST": "127.0.0.1",
                "AGENTMESH_GRPC_PORT": str(self.ports.memory),
                "AGENTMESH_METRICS_PORT": str(self.ports.metrics_memory),
                # As in production: its own role, no DDL (docs/adr/0018).
                "AGENTMESH_DATABASE_URL": service_url(self.postgres, "memory"),
                "AGENTMESH_REDIS_URL": self.redis.url,
                "AGENTMESH_AUTH_HS256_SECRET": self.secret,
                "AGENTMESH_LOG_LEVEL": "info",
                "AGENTMESH_DRAIN_GRACE_S": "1",
                "AGENTMESH_MEMORY_EMBEDDER": embedder,
                # CreateSession's runs make many sessions: no session quota here.
                "AGENTMESH_MEMORY_QUOTA_SESSIONS_ROWS": "0",
                "AGENTMESH_MEMORY_HNSW_M": str(HNSW_M),
                "AGENTMESH_MEMORY_HNSW_EF_CONSTRUCTION": str(HNSW_EF_CONSTRUCTION),
                "AGENTMESH_MEMORY_HNSW_EF_SEARCH": str(ef_search),
                **(extra or {}),
            }
        )

    def start_memory(
        self, ef_search: int, *, embedder: str = "hash", extra: Mapping[str, str] | None = None
    ) -> None:
        """(Re)start `python -m agentmesh.memory` with this `hnsw.ef_search` (and this
        embedder, and ``extra`` variables)."""
        self.stop_memory()
        self.starts += 1
        child = ChildProcess(
            "memory",
            [sys.executable, "-m", "agentmesh.memory"],
            log_path=self.work / "memory.log",
            env=self.memory_env(ef_search, embedder=embedder, extra=extra),
        )
        self.memory = child
        self.ef_search = ef_search

        def serving() -> bool:
            if child.returncode() is not None:
                raise BenchError(f"memory exited with {child.returncode()}:\n{child.log_tail()}")
            return check_health(self.memory_address, MEMORY_SERVICE, timeout_s=0.5) == "SERVING"

        try:
            wait_until(serving, timeout_s=60.0, what=f"memory SERVING on {self.memory_address}")
        except TimeoutError as exc:
            raise BenchError(f"{exc}\n{child.log_tail()}") from exc

    def stop_memory(self) -> None:
        if self.memory is not None:
            self.memory.stop(timeout_s=10.0)
            self.memory = None
            wait_port_free(self.ports.memory, timeout_s=10.0, what="(memory)")
            wait_port_free(self.ports.metrics_memory, timeout_s=10.0, what="(memory metrics)")

    def start_envoy(self) -> None:
        """The real Envoy config: `memory` → our service, `agent` → the raw echo; the other
        upstreams point at ports nobody listens on."""
        upstream_ports = {svc: self.ports.grpc_port(svc) for svc in SERVICE_NAMES}
        values = dev_values(
            ports=upstream_ports,
            descriptor_path=paths.descriptor_set(),
            external_port=self.ports.envoy_external,
            internal_port=self.ports.envoy_internal,
            admin_port=self.ports.envoy_admin,
        )
        config = self.work / "envoy.yaml"
        config.write_text(render_envoy_config(values))
        self.envoy = EnvoyProxy(config, self.ports.envoy_admin, log_path=self.work / "envoy.log")
        self.envoy.start()

    def close(self) -> list[str]:
        errors = stop_all([("memory", self.memory), ("envoy", self.envoy), ("echo-raw", self.echo)])
        self.memory = self.envoy = self.echo = None
        for name, stop in (("redis", self.redis.stop), ("postgres", self.postgres.stop)):
            try:
                stop()
            except Exception as exc:  # keep stopping the rest
                errors.append(f"{name}: {exc}")
        return errors


def start_stack(opts: BenchOptions) -> Stack:
    work = Path(tempfile.mkdtemp(prefix="memory-", dir=opts.work_dir))
    ports = StackPorts.free()
    return Stack(
        work=work,
        ports=ports,
        secret=secrets.token_urlsafe(48),
        postgres=EmbeddedPostgres(
            work / "postgres", log_path=work / "postgres.log", settings=PG_SETTINGS
        ),
        redis=RedisServer(
            work / "redis", ports.redis, appendonly=False, log_path=work / "redis.log"
        ),
    )


def children_cpu_s(parent: int | None) -> float:
    """User + system CPU seconds of `parent`, its live direct children (PostgreSQL's
    backends and workers are children of the postmaster) and the children it has reaped:
    without the last, a backend that exits between two samples takes its CPU out of the
    second one, and the difference can come out negative."""
    if parent is None:
        return 0.0
    total = proc_cpu_s(parent) + _reaped_children_cpu_s(parent)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[1] == str(parent):  # ppid
            total += proc_cpu_s(int(entry.name))
    return total


def _reaped_children_cpu_s(pid: int) -> float:
    """CPU seconds of the children ``pid`` has waited for (``cutime + cstime``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    # Fields 16 and 17 (cutime, cstime) are at 13 and 14 after the command name.
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
