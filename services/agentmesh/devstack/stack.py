"""The whole mesh on one machine: the launcher shared by `make dev` and the test fixtures.

Start order: PostgreSQL → migrations (as the superuser, the schemas' owner) → the
services' login roles → Redis → dev HS256 secret → services → worker →
Envoy → wait until every service answers SERVING directly and through Envoy's internal
listener. Stop order: services and worker (SIGTERM to all, then wait), Envoy, Redis,
PostgreSQL. Every child is stopped by PID (its process group), every wait is bounded.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Final

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentmesh.core.settings import otlp_endpoint
from agentmesh.devstack import paths
from agentmesh.devstack._proc import ChildProcess, ConsoleEcho, port_is_listening, wait_port_free
from agentmesh.devstack.env import child_env
from agentmesh.devstack.envoy_config import (
    HEALTH_ROUTE_HEADER,
    SERVICE_NAMES,
    dev_values,
    render_envoy_config,
)
from agentmesh.devstack.envoy_process import EnvoyProxy
from agentmesh.devstack.migrate import migrate
from agentmesh.devstack.postgres import EmbeddedPostgres
from agentmesh.devstack.redis import RedisServer
from agentmesh.devstack.roles import LOGIN_ROLES, create_login_roles, service_url
from agentmesh.memory.settings import MemorySettings

#: Start order: callees before callers (Conductor calls the other three).
SERVICES: Final = ("memory", "agent", "job", "conductor")
WORKER: Final = "worker"
_SECRET_BYTES: Final = 48  # HS256 wants ≥ 32 bytes of key (RFC 7518 §3.2)


class StackError(RuntimeError):
    """The stack could not start; the message names the component and quotes its log."""


@dataclass(frozen=True)
class StackPorts:
    """Every TCP port the stack listens on, all on 127.0.0.1."""

    envoy_external: int = 8080
    """gRPC + HTTP/JSON for clients."""
    envoy_internal: int = 8081
    """gRPC between services (the `AGENTMESH_*_ADDR` settings point here)."""
    envoy_admin: int = 9901
    conductor: int = 50051
    agent: int = 50052
    job: int = 50053
    memory: int = 50054
    metrics_conductor: int = 9101
    metrics_agent: int = 9102
    metrics_job: int = 9103
    metrics_memory: int = 9104
    metrics_worker: int = 9105
    redis: int = 6380
    """Not 6379, so a system Redis already running there does not collide."""
    more_replicas: tuple[tuple[str, int, int], ...] = ()
    """(service, gRPC port, metrics port) of each replica after a service's first."""

    def with_replicas(self, replicas: int) -> StackPorts:
        """These ports, plus `replicas - 1` more replicas of each service, each at its
        first replica's ports plus 100 per replica (`make dev --replicas 3`: Memory on
        50054, 50154 and 50254)."""
        more = tuple(
            (svc, self.grpc_port(svc) + 100 * k, self.metrics_port(svc) + 100 * k)
            for svc in SERVICES
            for k in range(1, replicas)
        )
        return replace(self, more_replicas=more)

    def replica_ports(self, service: str) -> list[tuple[int, int]]:
        """(gRPC port, metrics port) of every replica of the service, the first first."""
        return [(self.grpc_port(service), self.metrics_port(service))] + [
            (grpc_port, metrics) for svc, grpc_port, metrics in self.more_replicas if svc == service
        ]

    @classmethod
    def free(cls, replicas: int = 1) -> StackPorts:
        """Distinct free loopback ports, for tests that run beside `make dev` or each other.

        All sockets are held open until every port is chosen, so no two fields get the
        same port; another process could still take one before the stack binds it, which
        the stack reports as "port in use".
        """
        with ExitStack() as stack:
            chosen: dict[str, int] = {}

            def free_port() -> int:
                sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                sock.bind(("127.0.0.1", 0))
                port: int = sock.getsockname()[1]
                return port

            for f in fields(cls):
                if f.name != "more_replicas":
                    chosen[f.name] = free_port()
            more = tuple(
                (svc, free_port(), free_port()) for svc in SERVICES for _ in range(1, replicas)
            )
        return cls(**chosen, more_replicas=more)

    def grpc_port(self, service: str) -> int:
        port: int = getattr(self, service)
        return port

    def metrics_port(self, name: str) -> int:
        port: int = getattr(self, f"metrics_{name}")
        return port

    def as_dict(self) -> dict[str, int]:
        """Every port by name (`memory`, `metrics_memory`, `memory-2`, ...)."""
        named: dict[str, int] = {k: v for k, v in asdict(self).items() if k != "more_replicas"}
        for svc in SERVICES:
            for k, (grpc_port, metrics) in enumerate(self.replica_ports(svc)[1:], start=2):
                named[f"{svc}-{k}"] = grpc_port
                named[f"metrics_{svc}-{k}"] = metrics
        return named


class DevStack:
    """PostgreSQL, Redis, the services, the worker and Envoy under one supervisor.

    Args:
        root: state directory: `postgres/`, `redis/`, `auth/hs256.secret`, `envoy/`,
            `logs/<name>.log`. `make dev` uses `.data/` (kept across runs); tests a temp dir.
        ports: see `StackPorts`; `StackPorts.free()` in tests.
        services: which services to run (subset of `SERVICES`, started in that order).
        worker: also run the Dramatiq worker.
        extra_env: added to (and overriding) every child's environment.
        commands: per-child command override (`memory`, ..., `worker`); the default is
            `python -m agentmesh.<service>` and `python -m agentmesh.job.worker`.
        descriptor_set: the FileDescriptorSet for Envoy's transcoder and route table;
            default `gen/descriptors/agentmesh.binpb`.
        echo: also echo every child's output to the console (`make dev`).
        log_level: `AGENTMESH_LOG_LEVEL` of the services (debug, info, warning, ...).
        ready_timeout_s: bound on the wait for all services to be SERVING.
        redis_appendonly: Redis AOF persistence (on for dev data).
    """

    def __init__(
        self,
        root: Path,
        ports: StackPorts,
        *,
        services: Sequence[str] = SERVICES,
        worker: bool = True,
        extra_env: Mapping[str, str] | None = None,
        commands: Mapping[str, Sequence[str]] | None = None,
        descriptor_set: Path | None = None,
        echo: ConsoleEcho | None = None,
        log_level: str = "info",
        ready_timeout_s: float = 30.0,
        redis_appendonly: bool = True,
    ) -> None:
        unknown = [s for s in services if s not in SERVICES]
        if unknown:
            raise ValueError(f"unknown services {unknown}; expected a subset of {SERVICES}")
        self.root = root.resolve()
        self.ports = ports
        self.services = tuple(s for s in SERVICES if s in services)
        self.worker = worker
        self.extra_env = dict(extra_env or {})
        self.commands = {k: list(v) for k, v in (commands or {}).items()}
        self.descriptor_set = descriptor_set or paths.descriptor_set()
        self.echo = echo
        self.log_level = log_level
        self.ready_timeout_s = ready_timeout_s
        self.logs_dir = self.root / "logs"
        self.postgres = EmbeddedPostgres(
            self.root / "postgres", log_path=self.logs_dir / "postgres.log"
        )
        self.redis = RedisServer(
            self.root / "redis",
            ports.redis,
            appendonly=redis_appendonly,
            log_path=self.logs_dir / "redis.log",
            echo=echo,
        )
        self.envoy = EnvoyProxy(
            self.root / "envoy" / "envoy.yaml",
            ports.envoy_admin,
            log_path=self.logs_dir / "envoy.log",
            echo=echo,
        )
        self.children: dict[str, ChildProcess] = {}
        self._secret: str | None = None

    # -- addresses -------------------------------------------------------------------

    @property
    def database_url(self) -> str:
        """The application database as its owner (the superuser): migrations, tests'
        direct checks. The services never get this one (``service_database_url``)."""
        return self.postgres.database_url

    def service_database_url(self, service: str) -> str | None:
        """The application database as ``service``'s login role (read and write of its
        own schema, no DDL; docs/adr/0018), or None for a service without a database."""
        if service not in LOGIN_ROLES:
            return None
        return service_url(self.postgres, service)

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def secret(self) -> str:
        """The dev HS256 signing secret (created on first start, kept in `auth/`)."""
        if self._secret is None:
            raise StackError("the stack has not been started")
        return self._secret

    @property
    def secret_path(self) -> Path:
        return self.root / "auth" / "hs256.secret"

    @property
    def internal_address(self) -> str:
        return f"127.0.0.1:{self.ports.envoy_internal}"

    @property
    def endpoints(self) -> dict[str, str]:
        """Name → address: `envoy` (gRPC and HTTP/JSON), `envoy_internal`, `envoy_admin`,
        and each service replica's direct gRPC address (`memory`, `memory-2`, ...)."""
        result = {
            "envoy": f"127.0.0.1:{self.ports.envoy_external}",
            "envoy_internal": self.internal_address,
            "envoy_admin": f"http://127.0.0.1:{self.ports.envoy_admin}",
        }
        for svc in self.services:
            for name in self.replicas(svc):
                result[name] = f"127.0.0.1:{self._ports_of(name)[0]}"
        return result

    def replicas(self, service: str) -> list[str]:
        """The child names of a service's replicas: `memory`, then `memory-2`, ..."""
        count = len(self.ports.replica_ports(service))
        return [service] + [f"{service}-{k}" for k in range(2, count + 1)]

    def _replica(self, name: str) -> tuple[str, int]:
        """(service, index from 0) of a child name; the worker is ("worker", 0)."""
        service, _, number = name.partition("-")
        return service, int(number) - 1 if number else 0

    def _ports_of(self, name: str) -> tuple[int, int]:
        """(gRPC port, metrics port) of a child (the worker has no gRPC port: 0)."""
        service, index = self._replica(name)
        if service == WORKER:
            return 0, self.ports.metrics_port(WORKER)
        return self.ports.replica_ports(service)[index]

    def child_env(self, name: str) -> dict[str, str]:
        """The environment of child `name` (a service replica or `worker`)."""
        service, _ = self._replica(name)
        grpc_port, metrics_port = self._ports_of(name)
        values = {
            "AGENTMESH_ENV": "dev",
            "AGENTMESH_GRPC_HOST": "127.0.0.1",
            "AGENTMESH_METRICS_PORT": str(metrics_port),
            "AGENTMESH_REDIS_URL": self.redis_url,
            "AGENTMESH_AUTH_HS256_SECRET": self.secret,
            "AGENTMESH_LOG_LEVEL": self.log_level,
        }
        # Services reach each other through Envoy: per-request balancing, retries and
        # health-based routing are the same as in production.
        for svc in SERVICES:
            values[f"AGENTMESH_{svc.upper()}_ADDR"] = self.internal_address
        if service in SERVICES:
            values["AGENTMESH_GRPC_PORT"] = str(grpc_port)
        # Least privilege: a service with tables connects as its own role, the worker
        # as the Job service's (it writes job records); the others get no database.
        database_url = self.service_database_url("job" if service == WORKER else service)
        if database_url is not None:
            values["AGENTMESH_DATABASE_URL"] = database_url
        values.update(self.extra_env)
        # A developer's collector, if one is configured, sees the dev services' spans.
        return child_env(os.environ, values, drop_otlp=False)

    def command(self, name: str) -> list[str]:
        service, _ = self._replica(name)
        if service in self.commands:
            return self.commands[service]
        module = "agentmesh.job.worker" if service == WORKER else f"agentmesh.{service}"
        return [sys.executable, "-m", module]

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start everything and wait until it is healthy; on failure, stop what started."""
        self._check_ports_free()
        try:
            self.postgres.start()
            # The migration step builds the Memory HNSW index with the parameters the
            # Memory child will be started with (its environment: ours plus extra_env).
            migrate(self.database_url, MemorySettings.from_env({**os.environ, **self.extra_env}))
            create_login_roles(self.postgres)
            self.redis.start()
            self._secret = _load_or_create_secret(self.secret_path)
            names = [name for svc in self.services for name in self.replicas(svc)]
            for name in [*names, *([WORKER] if self.worker else [])]:
                self._spawn(name)
            self._write_envoy_config()
            self.envoy.start()
            self.wait_healthy(self.ready_timeout_s)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name: str) -> None:
        self.children[name] = ChildProcess(
            name,
            self.command(name),
            log_path=self.logs_dir / f"{name}.log",
            env=self.child_env(name),
            echo=self.echo,
        )

    def kill(self, name: str) -> int:
        """SIGKILL one child (`memory-2`, `worker`): a crash, for fault tests. Envoy's
        health checks and outlier detection take a dead replica out of rotation."""
        return self.children[name].kill()

    def restart(self, name: str) -> None:
        """Start a child again after it stopped (its log is appended to)."""
        child = self.children.get(name)
        if child is not None and child.returncode() is None:
            raise StackError(f"{name} is still running")
        self._spawn(name)

    def stop(self) -> None:
        """Stop children (SIGTERM all, then wait each), Envoy, Redis, PostgreSQL.

        Every step runs even if an earlier one fails; the first failure is raised last.
        """
        errors: list[BaseException] = []
        children = list(self.children.values())
        for child in reversed(children):  # callers first, so they stop calling
            child.terminate()
        for child in reversed(children):
            try:
                child.stop()
            except Exception as exc:  # keep stopping the rest, report the first
                errors.append(exc)
        self.children.clear()
        for step in (self.envoy.stop, self.redis.stop, self.postgres.stop):
            try:
                step()
            except Exception as exc:  # keep stopping the rest, report the first
                errors.append(exc)
        for port in self._service_ports():
            try:
                wait_port_free(port)
            except TimeoutError as exc:
                errors.append(exc)
        if errors:
            raise StackError(f"stopping the stack: {errors[0]}") from errors[0]

    def stop_postgres(self) -> None:
        """Stop PostgreSQL only (health tests: services must report NOT_SERVING)."""
        self.postgres.stop()

    def start_postgres(self) -> None:
        self.postgres.start()

    def exited_children(self) -> dict[str, int]:
        """Children that have exited, with their exit codes (supervisor watchdog)."""
        result: dict[str, int] = {}
        for name, child in self.children.items():
            code = child.returncode()
            if code is not None:
                result[name] = code
        if self.envoy.child is not None:
            code = self.envoy.child.returncode()
            if code is not None:
                result["envoy"] = code
        return result

    def log_tail(self, name: str, lines: int = 40) -> str:
        child = self.children.get(name)
        if child is not None:
            return child.log_tail(lines)
        path = self.logs_dir / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> DevStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- health ----------------------------------------------------------------------

    def health(self, name: str, *, via_envoy: bool = False, timeout_s: float = 1.0) -> str:
        """`grpc.health.v1.Health/Check` for the service's full name: the status name
        (`SERVING`, `NOT_SERVING`, ...) or `<gRPC code>: <details>` if the call failed.

        `name` is a service (its first replica, or any replica through Envoy) or one
        replica (`memory-2`)."""
        service, _ = self._replica(name)
        if via_envoy:
            address = self.internal_address
            metadata: tuple[tuple[str, str], ...] = ((HEALTH_ROUTE_HEADER, service),)
        else:
            address = f"127.0.0.1:{self._ports_of(name)[0]}"
            metadata = ()
        return check_health(address, SERVICE_NAMES[service], metadata=metadata, timeout_s=timeout_s)

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Wait until every started service is SERVING directly and through Envoy."""
        deadline = time.monotonic() + timeout_s
        pending = [name for svc in self.services for name in self.replicas(svc)]
        last: dict[str, str] = {}
        while pending:
            self._raise_if_exited()
            for svc in list(pending):
                direct = self.health(svc)
                via = self.health(svc, via_envoy=True) if direct == "SERVING" else "not checked"
                last[svc] = f"direct {direct}; via Envoy {via}"
                if direct == "SERVING" and via == "SERVING":
                    pending.remove(svc)
            if not pending:
                break
            if time.monotonic() >= deadline:
                svc = pending[0]
                raise StackError(
                    f"service {svc!r} ({SERVICE_NAMES[self._replica(svc)[0]]}) did not become"
                    " SERVING within "
                    f"{timeout_s:.0f} s ({last[svc]}); also pending: {pending[1:] or 'none'}\n"
                    f"--- last lines of {self.logs_dir / (svc + '.log')} ---\n{self.log_tail(svc)}"
                )
            time.sleep(0.2)
        self._raise_if_exited()

    # -- internals -------------------------------------------------------------------

    def _raise_if_exited(self) -> None:
        for name, code in self.exited_children().items():
            raise StackError(
                f"{name} exited with status {code}\n"
                f"--- last lines of {self.logs_dir / (name + '.log')} ---\n{self.log_tail(name)}"
            )

    def _write_envoy_config(self) -> None:
        values = dev_values(
            ports={svc: self.ports.grpc_port(svc) for svc in SERVICE_NAMES},
            more_ports={
                svc: [grpc_port for grpc_port, _ in self.ports.replica_ports(svc)[1:]]
                for svc in self.services
            },
            descriptor_path=self.descriptor_set,
            external_port=self.ports.envoy_external,
            internal_port=self.ports.envoy_internal,
            admin_port=self.ports.envoy_admin,
            # The services' collector, if any, gets Envoy's spans too: one trace per call.
            otlp_endpoint=otlp_endpoint({**os.environ, **self.extra_env}),
        )
        self.envoy.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.envoy.config_path.write_text(render_envoy_config(values))

    def _service_ports(self) -> list[int]:
        ports = [self.ports.envoy_external, self.ports.envoy_internal, self.ports.envoy_admin]
        ports += [self.ports.redis]
        for svc in self.services:
            for grpc_port, metrics_port in self.ports.replica_ports(svc):
                ports += [grpc_port, metrics_port]
        if self.worker:
            ports.append(self.ports.metrics_port(WORKER))
        return ports

    def _check_ports_free(self) -> None:
        busy = [port for port in self._service_ports() if port_is_listening(port)]
        if busy:
            names = {v: k for k, v in self.ports.as_dict().items()}
            listing = ", ".join(f"{names.get(p, '?')}={p}" for p in busy)
            raise StackError(
                f"ports already in use: {listing} (another `make dev` running? "
                "`ss -ltnp` shows who holds them)"
            )


def check_health(
    address: str,
    service: str,
    *,
    metadata: Sequence[tuple[str, str]] = (),
    timeout_s: float = 1.0,
) -> str:
    """One `Health/Check` call: the status name, or `<code>: <details>` on failure."""
    # No proxy: an http_proxy in the developer's environment must not catch loopback.
    with grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=timeout_s,
                metadata=tuple(metadata),
            )
        except grpc.RpcError as exc:
            code = exc.code()
            details = exc.details()
            return f"{code.name if code else 'UNKNOWN'}: {details}"
        name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        return name


def _load_or_create_secret(path: Path) -> str:
    """Read the dev HS256 secret, creating it (0600, in a 0700 dir) on first use."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        secret = path.read_text().strip()
        if len(secret) < 32:
            raise StackError(
                f"{path} holds a secret shorter than 32 characters; delete it"
            ) from None
        return secret
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret
