"""Envoy's retry policy against a real upstream failure: a Memory replica SIGKILLed mid-call.

Two real Memory processes are the two hosts of the `memory` cluster of the real Envoy,
configured from the same template as dev and Kubernetes (a second endpoint added to the
rendered cluster). A call is held inside one replica by a PostgreSQL lock this test takes
through its own connection; Envoy's admin `/clusters` tells which replica has it; that
replica is killed with SIGKILL, so Envoy sees the upstream connection reset mid-request.

- An idempotent read (GetSession, `NO_SIDE_EFFECTS`) is retried on the other replica and
  succeeds once the lock is released.
- A write that is not idempotent and carries no `request_id` (AppendMessages) is not
  retried: the client gets UNAVAILABLE and no message is stored, where a retry would
  have appended it on the surviving replica.

Nothing is timed: each step waits (bounded) for a state seen from outside the processes.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest
import yaml

from agentmesh.core.auth import mint_token
from agentmesh.devstack import paths
from agentmesh.devstack._proc import ChildProcess, wait_port_free
from agentmesh.devstack.env import child_env
from agentmesh.devstack.envoy_config import SERVICE_NAMES, dev_values, render_envoy_config
from agentmesh.devstack.envoy_process import EnvoyProxy
from agentmesh.devstack.migrate import migrate_up
from agentmesh.devstack.postgres import EmbeddedPostgres
from agentmesh.devstack.redis import RedisServer
from agentmesh.devstack.stack import check_health
from agentmesh.v1 import common_pb2, memory_pb2, memory_pb2_grpc

T = TypeVar("T")
TENANT = "acme"
MEMORY = SERVICE_NAMES["memory"]
WAIT_S = 30.0
"""Bound of every wait below (a loaded 2-core machine can be slow; nothing is timed)."""


def eventually(check: Callable[[], T | None], what: str, *, timeout_s: float = WAIT_S) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def free_ports(count: int) -> list[int]:
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


@dataclass
class Replica:
    port: int
    log_path: Path
    env: dict[str, str]
    child: ChildProcess | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    def alive(self) -> bool:
        return self.child is not None and self.child.returncode() is None

    def start(self) -> None:
        self.child = ChildProcess(
            f"memory-{self.port}",
            [sys.executable, "-m", "agentmesh.memory"],
            log_path=self.log_path,
            env={**self.env, "AGENTMESH_GRPC_PORT": str(self.port)},
        )
        child = self.child

        def serving() -> bool:
            if child.returncode() is not None:
                raise AssertionError(f"replica exited {child.returncode()}:\n{child.log_tail()}")
            return check_health(self.address, MEMORY, timeout_s=0.5) == "SERVING"

        eventually(serving, f"memory replica {self.address} SERVING", timeout_s=60.0)

    def kill(self) -> None:
        """SIGKILL: no drain, no FIN after a goodbye; the kernel resets its sockets."""
        assert self.child is not None
        os.kill(self.child.pid, signal.SIGKILL)
        self.child.stop(timeout_s=10.0)  # reaps it (and anything left in its group)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(timeout_s=15.0)
            self.child = None
        wait_port_free(self.port, timeout_s=10.0)


@dataclass
class Mesh:
    database_url: str
    envoy: EnvoyProxy
    envoy_address: str
    replicas: list[Replica]
    token: str

    def admin(self, path: str) -> str:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{self.envoy.admin_url}{path}", timeout=5.0) as resp:
            return bytes(resp.read()).decode()

    def host_stat(self, replica: Replica, name: str) -> str:
        """One per-host value of the `memory` cluster from admin `/clusters`."""
        prefix = f"memory::{replica.address}::{name}::"
        for line in self.admin("/clusters").splitlines():
            if line.startswith(prefix):
                return line[len(prefix) :]
        return ""

    def counter(self, name: str) -> int:
        for line in self.admin(f"/stats?filter=^{name}$").splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    root = Path(tempfile.mkdtemp(prefix="agentmesh-retries-"))
    (redis_port, external, internal, admin, port_a, port_b, *others) = free_ports(9)
    postgres = EmbeddedPostgres(root / "postgres", log_path=root / "postgres.log")
    cache = RedisServer(root / "redis", redis_port, appendonly=False, log_path=root / "redis.log")
    secret = secrets.token_urlsafe(48)
    replicas: list[Replica] = []
    envoy: EnvoyProxy | None = None
    try:
        postgres.start()
        migrate_up(postgres.database_url)
        cache.start()
        env = child_env(
            os.environ,
            {
                "AGENTMESH_ENV": "dev",
                "AGENTMESH_GRPC_HOST": "127.0.0.1",
                "AGENTMESH_METRICS_PORT": "0",
                "AGENTMESH_DATABASE_URL": postgres.database_url,
                "AGENTMESH_REDIS_URL": cache.url,
                "AGENTMESH_AUTH_HS256_SECRET": secret,
                "AGENTMESH_MEMORY_EMBEDDER": "hash",
                "AGENTMESH_DRAIN_GRACE_S": "1",
            },
            drop_otlp=True,
        )
        for port in (port_a, port_b):
            replica = Replica(port, root / f"memory-{port}.log", env)
            replicas.append(replica)
            replica.start()
        # The real template; the other services point at ports nobody listens on.
        ports = dict(zip(("conductor", "agent", "job"), others, strict=True))
        values = dev_values(
            ports={**ports, "memory": port_a},
            descriptor_path=paths.descriptor_set(),
            external_port=external,
            internal_port=internal,
            admin_port=admin,
        )
        config = yaml.safe_load(render_envoy_config(values))
        (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "memory"]
        endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        # The second replica: another host of the same cluster, as a second pod would be.
        address = {"address": "127.0.0.1", "port_value": port_b}
        endpoints.append({"endpoint": {"address": {"socket_address": address}}})
        config_path = root / "envoy.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        envoy = EnvoyProxy(config_path, admin, log_path=root / "envoy.log")
        envoy.start()
        mesh = Mesh(
            database_url=postgres.database_url,
            envoy=envoy,
            envoy_address=f"127.0.0.1:{external}",
            replicas=replicas,
            token=mint_token(secret, TENANT, subject="retries"),
        )
        yield mesh
    finally:
        for replica in replicas:
            replica.stop()
        if envoy is not None:
            envoy.stop()
        cache.stop()
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def both_healthy(mesh: Mesh) -> Mesh:
    """Both replicas running and healthy in Envoy's eyes (a test kills one)."""
    for replica in mesh.replicas:
        if not replica.alive():
            replica.stop()
            replica.start()
    for replica in mesh.replicas:
        eventually(
            lambda r=replica: mesh.host_stat(r, "health_flags") == "healthy",  # type: ignore[misc]
            f"Envoy to see {replica.address} healthy",
        )
    return mesh


@pytest.fixture
def stub(mesh: Mesh) -> Iterator[memory_pb2_grpc.MemoryServiceStub]:
    # No client-side retries: whatever is retried here is retried by Envoy.
    with grpc.insecure_channel(
        mesh.envoy_address, options=[("grpc.enable_retries", 0), ("grpc.enable_http_proxy", 0)]
    ) as channel:
        yield memory_pb2_grpc.MemoryServiceStub(channel)


def create_session(stub: memory_pb2_grpc.MemoryServiceStub, mesh: Mesh) -> str:
    session = stub.CreateSession(
        memory_pb2.CreateSessionRequest(
            session=memory_pb2.Session(display_name="retries"), request_id=str(uuid.uuid4())
        ),
        metadata=mesh.metadata,
        timeout=WAIT_S,
    )
    name: str = session.name
    return name


class Locker:
    """A PostgreSQL transaction of the test's own, holding a lock until `release()`.

    Runs its own event loop in this thread: one asyncpg connection, kept across calls.
    """

    def __init__(self, database_url: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._conn: Any = self._loop.run_until_complete(asyncpg.connect(database_url))
        self._tx: Any = None

    def hold(self, sql: str, *args: object) -> None:
        async def begin() -> None:
            self._tx = self._conn.transaction()
            await self._tx.start()
            await self._conn.execute(sql, *args)

        self._loop.run_until_complete(begin())

    def release(self) -> None:
        if self._tx is not None:
            self._loop.run_until_complete(self._tx.rollback())
            self._tx = None

    def fetchval(self, sql: str, *args: object) -> Any:
        return self._loop.run_until_complete(self._conn.fetchval(sql, *args))

    def close(self) -> None:
        self.release()
        self._loop.run_until_complete(self._conn.close())
        self._loop.close()


@pytest.fixture
def locker(mesh: Mesh) -> Iterator[Locker]:
    held = Locker(mesh.database_url)
    try:
        yield held
    finally:
        held.close()


def lock_waiters(locker: Locker) -> int:
    """Memory's pooled connections waiting on a lock (the test's own is not one)."""
    count: int = locker.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = 'agentmesh-memory' AND wait_event_type = 'Lock'"
    )
    return count


def holder_of_the_call(mesh: Mesh) -> Replica:
    """The replica Envoy sent the in-flight call to (its one active request)."""

    def find() -> Replica | None:
        busy = [r for r in mesh.replicas if mesh.host_stat(r, "rq_active") == "1"]
        return busy[0] if len(busy) == 1 else None

    return eventually(find, "one replica with the call in flight")


def test_idempotent_read_is_retried_on_the_other_replica(
    both_healthy: Mesh, stub: memory_pb2_grpc.MemoryServiceStub, locker: Locker
) -> None:
    mesh = both_healthy
    name = create_session(stub, mesh)
    retries_before = mesh.counter("cluster.memory.upstream_rq_retry")
    # A plain SELECT waits only behind ACCESS EXCLUSIVE; health probes run `SELECT 1`.
    locker.hold("LOCK TABLE memory.sessions IN ACCESS EXCLUSIVE MODE")
    call = stub.GetSession.future(
        memory_pb2.GetSessionRequest(name=name), metadata=mesh.metadata, timeout=WAIT_S * 2
    )
    try:
        first = holder_of_the_call(mesh)
        eventually(lambda: lock_waiters(locker) >= 1, "GetSession to wait on the lock")
        first.kill()
        (survivor,) = [r for r in mesh.replicas if r is not first]
        # Envoy resent the read after the reset: it is now in flight on the survivor.
        eventually(
            lambda: mesh.host_stat(survivor, "rq_active") == "1",
            "the retried GetSession on the surviving replica",
        )
        assert not call.done()
    finally:
        locker.release()
    session = call.result(timeout=WAIT_S)
    assert session.name == name
    # At least the one retry after the reset; on a loaded machine the retried read,
    # still waiting behind the lock, may also pass its per-try timeout and go again.
    assert mesh.counter("cluster.memory.upstream_rq_retry") >= retries_before + 1


def test_write_without_request_id_is_not_retried_after_a_reset(
    both_healthy: Mesh, stub: memory_pb2_grpc.MemoryServiceStub, locker: Locker
) -> None:
    mesh = both_healthy
    name = create_session(stub, mesh)
    session_id = name.removeprefix("sessions/")
    retries_before = mesh.counter("cluster.memory.upstream_rq_retry")
    # AppendMessages locks the session row (SELECT ... FOR UPDATE) before it writes.
    locker.hold(
        "SELECT 1 FROM memory.sessions WHERE tenant = $1 AND id = $2 FOR UPDATE",
        TENANT,
        session_id,
    )
    message = memory_pb2.Message(
        role=common_pb2.ROLE_USER, parts=[common_pb2.Part(text="at most once")]
    )
    call = stub.AppendMessages.future(
        memory_pb2.AppendMessagesRequest(parent=name, messages=[message]),  # no request_id
        metadata=mesh.metadata,
        timeout=WAIT_S * 2,
    )
    try:
        first = holder_of_the_call(mesh)
        eventually(lambda: lock_waiters(locker) >= 1, "AppendMessages to wait on the lock")
        first.kill()
        (survivor,) = [r for r in mesh.replicas if r is not first]
        # Envoy either answers at once (no retry) or resends the append to the survivor,
        # where it would wait on the lock: wait for whichever comes first.
        eventually(
            lambda: call.done() or mesh.host_stat(survivor, "rq_active") != "0",
            "Envoy to answer the append or resend it",
        )
        assert mesh.host_stat(survivor, "rq_active") == "0", "the append was resent"
        assert mesh.counter("cluster.memory.upstream_rq_retry") == retries_before
        with pytest.raises(grpc.RpcError) as failed:
            call.result(timeout=WAIT_S)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value
    finally:
        locker.release()
    # The killed replica's backend ends its transaction without a commit once it sees
    # its client gone; after that, count what is stored.
    eventually(lambda: lock_waiters(locker) == 0 or None, "no connection left on the lock")
    stored = stub.ListMessages(
        memory_pb2.ListMessagesRequest(parent=name), metadata=mesh.metadata, timeout=WAIT_S
    )
    assert list(stored.messages) == []
    rows = locker.fetchval(
        "SELECT count(*) FROM memory.messages WHERE tenant = $1 AND session_id = $2",
        TENANT,
        session_id,
    )
    assert rows == 0
    session = stub.GetSession(
        memory_pb2.GetSessionRequest(name=name), metadata=mesh.metadata, timeout=WAIT_S
    )
    assert session.message_count == 0
