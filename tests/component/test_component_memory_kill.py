"""Nothing acknowledged is lost: a real Memory process is SIGKILLed while bulk imports,
concurrent creates and its indexer are all in flight, then started again.

Every memory whose call returned OK before the kill is there afterwards, with its
content; an import slice the kill cut short is all there or not at all, and sending it
again with its request_id completes it without a copy; the restarted replica's indexer
takes every imported memory into the HNSW index. Bounded in count and time; nothing is
timed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import asyncpg  # type: ignore[import-untyped]
import grpc
import numpy as np
import pytest

from agentmesh.devstack._proc import ChildProcess, wait_port_free
from agentmesh.devstack.env import child_env
from agentmesh.devstack.stack import check_health
from agentmesh.v1 import memory_pb2, memory_pb2_grpc
from component.conftest import SECRET, Backends, Metadata, credentials
from component.memory_helpers import Stub, eventually, free_port, uid

DIM = 384
SLICE = 500
"""Memories per import slice."""
CREATORS = 8
"""Concurrent CreateMemory callers."""
IMPORTERS = 2
"""Concurrent ImportMemories callers."""
KILL_AFTER_SLICES = 3
KILL_AFTER_CREATES = 60
WAIT_S = 120.0


def vectors(rng: np.random.Generator, count: int) -> list[list[float]]:
    # numpy: a slice's vectors in a millisecond, so the importers spend their time in
    # calls, and the kill lands in one.
    return cast("list[list[float]]", rng.standard_normal((count, DIM)).tolist())


@dataclass
class Ledger:
    """What the clients sent and what the service acknowledged."""

    created: dict[str, str] = field(default_factory=dict)
    """Acknowledged CreateMemory: name → content."""
    slices: dict[str, memory_pb2.ImportMemoriesRequest] = field(default_factory=dict)
    """Every import slice sent, by namespace (one namespace per slice)."""
    imported: dict[str, list[str]] = field(default_factory=dict)
    """Acknowledged slices: namespace → the names returned."""
    failures: list[grpc.StatusCode] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


class MemoryProcess:
    def __init__(self, backends: Backends, root: Path) -> None:
        self.port = free_port()
        self.root = root
        self.env = child_env(
            os.environ,
            {
                "AGENTMESH_ENV": "dev",
                "AGENTMESH_GRPC_HOST": "127.0.0.1",
                "AGENTMESH_GRPC_PORT": str(self.port),
                "AGENTMESH_METRICS_PORT": "0",
                "AGENTMESH_DATABASE_URL": backends.memory_url,
                "AGENTMESH_REDIS_URL": backends.redis_url,
                "AGENTMESH_AUTH_HS256_SECRET": SECRET,
                "AGENTMESH_MEMORY_EMBEDDER": "hash",
                "AGENTMESH_MEMORY_INDEXER_INTERVAL_S": "0.2",
                "AGENTMESH_DRAIN_GRACE_S": "1",
            },
            drop_otlp=True,
        )
        self.child: ChildProcess | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Starts the process and waits (bounded) until its health says SERVING."""
        self.starts += 1
        self.child = ChildProcess(
            f"memory-kill-{self.starts}",
            [sys.executable, "-m", "agentmesh.memory"],
            log_path=self.root / f"memory-{self.starts}.log",
            env=self.env,
        )
        child = self.child
        name = "agentmesh.v1.MemoryService"

        def serving() -> bool:
            if child.returncode() is not None:
                raise AssertionError(f"memory exited {child.returncode()}:\n{child.log_tail()}")
            return check_health(self.address, name, timeout_s=0.5) == "SERVING"

        until = time.monotonic() + 60.0
        while not serving():
            if time.monotonic() > until:
                raise AssertionError(f"memory not SERVING:\n{child.log_tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.child is not None
        os.kill(self.child.pid, signal.SIGKILL)
        self.child.stop(timeout_s=10.0)  # reaps it
        self.child = None
        wait_port_free(self.port, timeout_s=10.0)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(timeout_s=15.0)
            self.child = None


@pytest.fixture
def process(backends: Backends) -> Iterator[MemoryProcess]:
    with tempfile.TemporaryDirectory(prefix="agentmesh-kill-") as root:
        running = MemoryProcess(backends, Path(root))
        try:
            yield running
        finally:
            running.stop()


async def creator(stub: Stub, auth: Metadata, ledger: Ledger, prefix: str, n: int) -> None:
    rng = np.random.default_rng(n)
    i = 0
    while not ledger.stop.is_set() and i < 2000:
        i += 1
        content = f"created {n}-{i}"
        request = memory_pb2.CreateMemoryRequest(
            memory=memory_pb2.Memory(
                namespace=f"{prefix}/creates/{n}", content=content, embedding=vectors(rng, 1)[0]
            )
        )
        try:
            made = await stub.CreateMemory(request, metadata=auth, timeout=30)
        except grpc.aio.AioRpcError as error:
            ledger.failures.append(error.code())
            return  # the process is gone: this caller is done
        ledger.created[made.name] = content


async def importer(stub: Stub, auth: Metadata, ledger: Ledger, prefix: str, n: int) -> None:
    rng = np.random.default_rng(1000 + n)
    i = 0
    while not ledger.stop.is_set() and i < 40:
        i += 1
        namespace = f"{prefix}/imports/{n}-{i}"
        request = memory_pb2.ImportMemoriesRequest(
            memories=[
                memory_pb2.Memory(namespace=namespace, content=f"{namespace} #{k}", embedding=v)
                for k, v in enumerate(vectors(rng, SLICE))
            ],
            request_id=f"slice-{uid(16)}",
        )
        ledger.slices[namespace] = request
        try:
            response = await stub.ImportMemories(request, metadata=auth, timeout=60)
        except grpc.aio.AioRpcError as error:
            ledger.failures.append(error.code())
            return
        ledger.imported[namespace] = list(response.names)


async def test_acknowledged_memories_survive_a_sigkill_mid_import_and_mid_writes(
    process: MemoryProcess, backends: Backends
) -> None:
    auth = credentials("kill-" + uid(8))
    prefix = f"kill/{uid(8)}"
    ledger = Ledger()
    process.start()
    async with grpc.aio.insecure_channel(process.address) as channel:
        stub = cast("Stub", memory_pb2_grpc.MemoryServiceStub(channel))
        workers = [
            *(asyncio.create_task(creator(stub, auth, ledger, prefix, n)) for n in range(CREATORS)),
            *(
                asyncio.create_task(importer(stub, auth, ledger, prefix, n))
                for n in range(IMPORTERS)
            ),
        ]

        async def enough() -> bool:
            if any(task.done() and task.exception() for task in workers):
                raise AssertionError([task.exception() for task in workers if task.done()])
            return (
                len(ledger.imported) >= KILL_AFTER_SLICES
                and len(ledger.created) >= KILL_AFTER_CREATES
            )

        await eventually(enough, "acknowledged imports and creates", WAIT_S)
        process.kill()  # mid-flight: every caller has a call outstanding
        ledger.stop.set()
        await asyncio.wait_for(asyncio.gather(*workers), WAIT_S)
    # The kill cut calls short (they are not acknowledged, so not in the ledger).
    assert ledger.failures, "the kill hit no call in flight"
    assert len(ledger.slices) > len(ledger.imported), "no import slice was cut short"
    assert set(ledger.failures) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL}, (
        ledger.failures
    )

    conn = await asyncpg.connect(backends.database_url)
    try:
        process.start()
        async with grpc.aio.insecure_channel(process.address) as channel:
            stub = cast("Stub", memory_pb2_grpc.MemoryServiceStub(channel))
            # Every acknowledged create is there, with its content.
            for name, content in ledger.created.items():
                got = await stub.GetMemory(memory_pb2.GetMemoryRequest(name=name), metadata=auth)
                assert got.content == content
            # Every acknowledged slice is there whole; a cut one is whole or absent.
            for namespace, request in ledger.slices.items():
                stored = await conn.fetchval(
                    "SELECT count(*) FROM memory.memories WHERE namespace = $1", namespace
                )
                if namespace in ledger.imported:
                    assert stored == SLICE, (namespace, stored)
                    ids = [n.removeprefix("memories/") for n in ledger.imported[namespace]]
                    found = await conn.fetchval(
                        "SELECT count(*) FROM memory.memories WHERE id = ANY($1)", ids
                    )
                    assert found == SLICE
                else:
                    assert stored in (0, SLICE), (namespace, stored)
                    # Sent again with its request_id: completed once, never copied.
                    response = await stub.ImportMemories(request, metadata=auth, timeout=60)
                    assert len(set(response.names)) == SLICE
                    again = await conn.fetchval(
                        "SELECT count(*) FROM memory.memories WHERE namespace = $1", namespace
                    )
                    assert again == SLICE, (namespace, again)

            # The restarted replica's indexer takes the whole tail into the index.
            async def indexed() -> bool:
                waiting: int = await conn.fetchval(
                    "SELECT count(*) FROM memory.memories WHERE namespace LIKE $1 AND NOT indexed",
                    prefix + "/%",
                )
                return waiting == 0

            await eventually(indexed, "the indexer to index every imported memory", WAIT_S * 2)
    finally:
        await conn.close()
