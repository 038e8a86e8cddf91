"""LangGraph checkpoint RPCs over real gRPC and PostgreSQL, and AgentmeshSaver on them.

LangGraph's conformance suite (test_checkpoint_conformance.py) covers the saver's
semantics; these cover what it cannot see: tenant isolation, validation, NOT_FOUND /
ALREADY_EXISTS, paging, retention, credentials, and a real graph resuming a thread.
"""

from __future__ import annotations

import asyncio
import json
import operator
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypedDict, cast

import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.graph import END, START, StateGraph

from agentmesh.core.auth import mint_token
from agentmesh.core.context import MissingCallContextError, bind_call, reset_call
from agentmesh.core.server import RunningServer, start_server
from agentmesh.langgraph import AgentmeshSaver
from agentmesh.memory.app import build_memory
from agentmesh.v1 import memory_pb2, memory_pb2_grpc

# `component.conftest`, not `conftest`: the name mypy resolves too (mypy_path has tests/).
from component.conftest import SECRET, Backends, Metadata, credentials, memory_settings
from component.memory_helpers import Stub, field_violations, rpc_error, uid

pytestmark = pytest.mark.component


def _checkpoint(
    thread_id: str,
    checkpoint_id: str,
    *,
    ns: str = "",
    parent: str = "",
    metadata: dict[str, Any] | None = None,
) -> memory_pb2.PutCheckpointRequest:
    return memory_pb2.PutCheckpointRequest(
        checkpoint=memory_pb2.Checkpoint(
            thread_id=thread_id,
            checkpoint_ns=ns,
            checkpoint_id=checkpoint_id,
            parent_checkpoint_id=parent,
            checkpoint=memory_pb2.TypedValue(type="json", data=b'{"v": 1}'),
            metadata_json=json.dumps(metadata or {"source": "loop", "step": 0}),
        )
    )


def _write(task_id: str, channel: str, data: bytes, idx: int = 0) -> memory_pb2.PendingWrite:
    return memory_pb2.PendingWrite(
        task_id=task_id,
        channel=channel,
        value=memory_pb2.TypedValue(type="json", data=data),
        idx=idx,
    )


async def _chain(stub: Stub, md: Metadata, thread_id: str, n: int, ns: str = "") -> list[str]:
    """Puts ``n`` checkpoints in a parent chain; returns their ids oldest first."""
    ids = [f"{i:08d}-{uid()}" for i in range(n)]
    for i, checkpoint_id in enumerate(ids):
        parent = ids[i - 1] if i else ""
        await stub.PutCheckpoint(
            _checkpoint(thread_id, checkpoint_id, ns=ns, parent=parent, metadata={"step": i}),
            metadata=md,
        )
    return ids


async def _ids(stub: Stub, md: Metadata, thread_id: str) -> list[str]:
    listed = await stub.ListCheckpoints(
        memory_pb2.ListCheckpointsRequest(thread_id=thread_id), metadata=md
    )
    return [t.checkpoint.checkpoint_id for t in listed.checkpoints]


# ------------------------------------------------------------------- the RPCs


async def test_put_get_round_trip_keeps_bytes_metadata_and_writes(
    memory: Stub, tenant_a: Metadata
) -> None:
    thread = f"t-{uid()}"
    metadata = {"source": "loop", "step": 3, "run_id": "r1", "big": 2**53 + 1, "f": 1.5}
    await memory.PutCheckpoint(_checkpoint(thread, "c1", metadata=metadata), metadata=tenant_a)
    stored = await memory.PutCheckpointWrites(
        memory_pb2.PutCheckpointWritesRequest(
            thread_id=thread,
            checkpoint_id="c1",
            writes=[_write("task-b", "x", b"1"), _write("task-a", "y", b"2", idx=1)],
        ),
        metadata=tenant_a,
    )
    assert stored.stored_count == 2

    found = await memory.GetCheckpoint(
        memory_pb2.GetCheckpointRequest(thread_id=thread), metadata=tenant_a
    )
    assert found.checkpoint.checkpoint == memory_pb2.TypedValue(type="json", data=b'{"v": 1}')
    assert json.loads(found.checkpoint.metadata_json) == metadata  # integers stay integers
    assert found.checkpoint.HasField("create_time")
    # LangGraph's writes_sort_key order: task path, then task id, then index.
    assert [(w.task_id, w.channel) for w in found.pending_writes] == [
        ("task-a", "y"),
        ("task-b", "x"),
    ]


async def test_missing_checkpoints_are_not_found(memory: Stub, tenant_a: Metadata) -> None:
    thread = f"t-{uid()}"
    missing = await rpc_error(
        memory.GetCheckpoint(memory_pb2.GetCheckpointRequest(thread_id=thread), metadata=tenant_a)
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    await memory.PutCheckpoint(_checkpoint(thread, "c1"), metadata=tenant_a)
    wrong_id = await rpc_error(
        memory.GetCheckpoint(
            memory_pb2.GetCheckpointRequest(thread_id=thread, checkpoint_id="nope"),
            metadata=tenant_a,
        )
    )
    assert wrong_id.code() == grpc.StatusCode.NOT_FOUND
    other_ns = await rpc_error(
        memory.GetCheckpoint(
            memory_pb2.GetCheckpointRequest(thread_id=thread, checkpoint_ns="child:1"),
            metadata=tenant_a,
        )
    )
    assert other_ns.code() == grpc.StatusCode.NOT_FOUND


async def test_another_tenant_sees_and_touches_nothing(
    memory: Stub, tenant_a: Metadata, tenant_b: Metadata
) -> None:
    thread = f"t-{uid()}"
    await _chain(memory, tenant_a, thread, 2)

    hidden = await rpc_error(
        memory.GetCheckpoint(memory_pb2.GetCheckpointRequest(thread_id=thread), metadata=tenant_b)
    )
    assert hidden.code() == grpc.StatusCode.NOT_FOUND
    assert await _ids(memory, tenant_b, thread) == []
    copy = await rpc_error(
        memory.CopyThread(
            memory_pb2.CopyThreadRequest(source_thread_id=thread, target_thread_id=f"t-{uid()}"),
            metadata=tenant_b,
        )
    )
    assert copy.code() == grpc.StatusCode.NOT_FOUND
    deleted = await memory.DeleteThread(
        memory_pb2.DeleteThreadRequest(thread_id=thread), metadata=tenant_b
    )
    pruned = await memory.PruneCheckpoints(
        memory_pb2.PruneCheckpointsRequest(thread_ids=[thread], keep_latest=1), metadata=tenant_b
    )
    assert deleted.deleted_checkpoints == 0
    assert pruned.deleted_checkpoints == 0
    assert len(await _ids(memory, tenant_a, thread)) == 2


async def test_bad_requests_name_every_bad_field(memory: Stub, tenant_a: Metadata) -> None:
    empty = memory_pb2.PutCheckpointRequest(checkpoint=memory_pb2.Checkpoint(metadata_json="[1]"))
    assert set(await field_violations(memory.PutCheckpoint(empty, metadata=tenant_a))) == {
        "checkpoint.thread_id",
        "checkpoint.checkpoint_id",
        "checkpoint.checkpoint",
        "checkpoint.metadata_json",
    }
    nul = _checkpoint("t\x00", "c", metadata={"x": "a\x00b"})
    assert set(await field_violations(memory.PutCheckpoint(nul, metadata=tenant_a))) == {
        "checkpoint.thread_id",
        "checkpoint.metadata_json",
    }
    oversize = _checkpoint("t", "c", metadata={"x": "y" * 300_000})
    assert "checkpoint.metadata_json" in await field_violations(
        memory.PutCheckpoint(oversize, metadata=tenant_a)
    )
    no_writes = memory_pb2.PutCheckpointWritesRequest(thread_id="t", checkpoint_id="c")
    assert "writes" in await field_violations(
        memory.PutCheckpointWrites(no_writes, metadata=tenant_a)
    )
    bad_write = memory_pb2.PutCheckpointWritesRequest(
        thread_id="t", checkpoint_id="c", writes=[memory_pb2.PendingWrite(task_id="k")]
    )
    assert set(
        await field_violations(memory.PutCheckpointWrites(bad_write, metadata=tenant_a))
    ) == {
        "writes[0].channel",
        "writes[0].value",
    }
    assert "thread_id" in await field_violations(
        memory.GetCheckpoint(memory_pb2.GetCheckpointRequest(), metadata=tenant_a)
    )
    assert "metadata_filter_json" in await field_violations(
        memory.ListCheckpoints(
            memory_pb2.ListCheckpointsRequest(metadata_filter_json="{oops"), metadata=tenant_a
        )
    )
    assert "page_token" in await field_violations(
        memory.ListCheckpoints(
            memory_pb2.ListCheckpointsRequest(page_token="garbage!"), metadata=tenant_a
        )
    )
    assert "target_thread_id" in await field_violations(
        memory.CopyThread(
            memory_pb2.CopyThreadRequest(source_thread_id="t", target_thread_id="t"),
            metadata=tenant_a,
        )
    )
    assert "run_ids" in await field_violations(
        memory.DeleteCheckpointsForRuns(
            memory_pb2.DeleteCheckpointsForRunsRequest(), metadata=tenant_a
        )
    )
    assert set(
        await field_violations(
            memory.PruneCheckpoints(memory_pb2.PruneCheckpointsRequest(), metadata=tenant_a)
        )
    ) == {"thread_ids", "keep_latest"}


async def test_writes_are_idempotent_but_special_writes_are_replaced(
    memory: Stub, tenant_a: Metadata
) -> None:
    thread = f"t-{uid()}"
    await memory.PutCheckpoint(_checkpoint(thread, "c1"), metadata=tenant_a)

    async def put(*writes: memory_pb2.PendingWrite) -> int:
        request = memory_pb2.PutCheckpointWritesRequest(
            thread_id=thread, checkpoint_id="c1", writes=writes
        )
        return (await memory.PutCheckpointWrites(request, metadata=tenant_a)).stored_count

    assert await put(_write("t1", "ch", b'"first"'), _write("t1", "__error__", b'"e1"', -1)) == 2
    # A retried task keeps its first regular write; its error is replaced.
    assert await put(_write("t1", "ch", b'"retry"'), _write("t1", "__error__", b'"e2"', -1)) == 1
    found = await memory.GetCheckpoint(
        memory_pb2.GetCheckpointRequest(thread_id=thread), metadata=tenant_a
    )
    assert {w.channel: w.value.data for w in found.pending_writes} == {
        "ch": b'"first"',
        "__error__": b'"e2"',
    }


async def test_writes_may_arrive_before_their_checkpoint(memory: Stub, tenant_a: Metadata) -> None:
    """LangGraph submits a checkpoint and writes against it concurrently
    (durability "async"/"exit"), so the service must not insist on the order."""
    thread = f"t-{uid()}"
    early = memory_pb2.PutCheckpointWritesRequest(
        thread_id=thread, checkpoint_id="c1", writes=[_write("t1", "ch", b"1")]
    )
    stored = await memory.PutCheckpointWrites(early, metadata=tenant_a)  # not NOT_FOUND
    assert stored.stored_count == 1
    # Writes alone are no checkpoint: nothing reads them yet.
    missing = await rpc_error(
        memory.GetCheckpoint(
            memory_pb2.GetCheckpointRequest(thread_id=thread, checkpoint_id="c1"),
            metadata=tenant_a,
        )
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert await _ids(memory, tenant_a, thread) == []

    await memory.PutCheckpoint(_checkpoint(thread, "c1"), metadata=tenant_a)
    found = await memory.GetCheckpoint(
        memory_pb2.GetCheckpointRequest(thread_id=thread), metadata=tenant_a
    )
    assert [(w.task_id, w.channel, w.value.data) for w in found.pending_writes] == [
        ("t1", "ch", b"1")
    ]
    listed = await memory.ListCheckpoints(
        memory_pb2.ListCheckpointsRequest(thread_id=thread), metadata=tenant_a
    )
    assert [[w.channel for w in t.pending_writes] for t in listed.checkpoints] == [["ch"]]


async def _orphans(db: asyncpg.Pool, thread: str) -> list[str]:
    """Checkpoint ids of the thread's writes that have no stored checkpoint."""
    rows = await db.fetch(
        """
        SELECT DISTINCT w.checkpoint_id FROM memory.checkpoint_writes AS w
        WHERE w.thread_id = $1 AND NOT EXISTS (
            SELECT 1 FROM memory.checkpoints AS c
            WHERE c.tenant = w.tenant AND c.thread_id = w.thread_id
              AND c.checkpoint_ns = w.checkpoint_ns AND c.checkpoint_id = w.checkpoint_id
        )
        ORDER BY 1
        """,
        thread,
    )
    return [row["checkpoint_id"] for row in rows]


async def _put_writes(stub: Stub, md: Metadata, thread: str, checkpoint_id: str) -> None:
    await stub.PutCheckpointWrites(
        memory_pb2.PutCheckpointWritesRequest(
            thread_id=thread, checkpoint_id=checkpoint_id, writes=[_write("t", "ch", b"1")]
        ),
        metadata=md,
    )


async def test_writes_of_a_checkpoint_never_stored_are_not_left_forever(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    """Writes whose checkpoint never lands (a failed run) carry no run id and belong to
    no copied checkpoint; DeleteThread always removes them, a prune when that
    checkpoint could not be kept anyway."""
    thread, run = f"t-{uid()}", f"run-{uid()}"
    ids = [f"{i:08d}" for i in range(1, 5)]
    for i, checkpoint_id in enumerate(ids):
        metadata = {"run_id": run, "step": i}
        await memory.PutCheckpoint(
            _checkpoint(thread, checkpoint_id, metadata=metadata), metadata=tenant_a
        )
    # Never stored: one older than every checkpoint, one newer (still in flight).
    await _put_writes(memory, tenant_a, thread, "00000000")
    await _put_writes(memory, tenant_a, thread, "00000009")

    # Not the run's: they stay.
    await memory.DeleteCheckpointsForRuns(
        memory_pb2.DeleteCheckpointsForRunsRequest(run_ids=["other-run"]), metadata=tenant_a
    )
    assert await _orphans(db, thread) == ["00000000", "00000009"]

    # Not copied: on the target their checkpoint could never land.
    target = f"t-{uid()}"
    copied = await memory.CopyThread(
        memory_pb2.CopyThreadRequest(source_thread_id=thread, target_thread_id=target),
        metadata=tenant_a,
    )
    assert copied.copied_checkpoints == 4
    assert await _orphans(db, target) == []

    # keep 5 of 4: the old one could still be kept if it landed, so its writes stay.
    await memory.PruneCheckpoints(
        memory_pb2.PruneCheckpointsRequest(thread_ids=[thread], keep_latest=5),
        metadata=tenant_a,
    )
    assert await _orphans(db, thread) == ["00000000", "00000009"]
    # keep 2: 00000000 has 2 newer checkpoints and would be pruned on arrival; the
    # writes running ahead of the newest checkpoint stay.
    pruned = await memory.PruneCheckpoints(
        memory_pb2.PruneCheckpointsRequest(thread_ids=[thread], keep_latest=2),
        metadata=tenant_a,
    )
    assert pruned.deleted_checkpoints == 2
    assert await _orphans(db, thread) == ["00000009"]
    await memory.PutCheckpoint(_checkpoint(thread, "00000009"), metadata=tenant_a)
    latest = await memory.GetCheckpoint(
        memory_pb2.GetCheckpointRequest(thread_id=thread), metadata=tenant_a
    )
    assert latest.checkpoint.checkpoint_id == "00000009"
    assert [w.channel for w in latest.pending_writes] == ["ch"]

    # DeleteThread leaves nothing of the thread behind.
    await _put_writes(memory, tenant_a, thread, "00000010")
    await memory.DeleteThread(memory_pb2.DeleteThreadRequest(thread_id=thread), metadata=tenant_a)
    remaining = "SELECT count(*) FROM memory.checkpoint_writes WHERE thread_id = $1"
    assert await db.fetchval(remaining, thread) == 0


async def test_a_thread_with_only_early_writes_has_nothing_to_copy(
    memory: Stub, tenant_a: Metadata
) -> None:
    thread = f"t-{uid()}"
    await _put_writes(memory, tenant_a, thread, "c1")
    missing = await rpc_error(
        memory.CopyThread(
            memory_pb2.CopyThreadRequest(source_thread_id=thread, target_thread_id=f"t-{uid()}"),
            metadata=tenant_a,
        )
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND


async def test_list_pages_over_every_thread_of_the_tenant_newest_first(memory: Stub) -> None:
    md = credentials(f"lister-{uid()}")
    for thread in ("t1", "t2"):
        await _chain(memory, md, thread, 3)
        await _chain(memory, md, thread, 1, ns="child:1")
    pages: list[list[str]] = []
    token = ""
    while True:
        page = await memory.ListCheckpoints(
            memory_pb2.ListCheckpointsRequest(page_size=3, page_token=token), metadata=md
        )
        pages.append([t.checkpoint.checkpoint_id for t in page.checkpoints])
        token = page.next_page_token
        if not token:
            break
    listed = [checkpoint_id for page in pages for checkpoint_id in page]
    assert [len(page) for page in pages] == [3, 3, 2]
    assert len(set(listed)) == 8
    assert listed == sorted(listed, reverse=True)

    root_only = await memory.ListCheckpoints(
        memory_pb2.ListCheckpointsRequest(thread_id="t1", checkpoint_ns=""), metadata=md
    )
    filtered = await memory.ListCheckpoints(
        memory_pb2.ListCheckpointsRequest(metadata_filter_json='{"step": 1}'), metadata=md
    )
    assert len(root_only.checkpoints) == 3
    assert len(filtered.checkpoints) == 2
    first = await memory.ListCheckpoints(
        memory_pb2.ListCheckpointsRequest(page_size=3), metadata=md
    )
    # A token is bound to its query: replayed with another filter, it is refused.
    replayed = memory_pb2.ListCheckpointsRequest(
        thread_id="t1", page_size=3, page_token=first.next_page_token
    )
    assert "page_token" in await field_violations(memory.ListCheckpoints(replayed, metadata=md))


async def test_list_pages_are_cut_to_fit_the_message_limit(
    memory: Stub, tenant_a: Metadata
) -> None:
    """Three 1.5 MB states cannot share a 4 MiB response: one per page, none lost."""
    thread = f"t-{uid()}"
    for checkpoint_id in ("c1", "c2", "c3"):
        request = _checkpoint(thread, checkpoint_id)
        request.checkpoint.checkpoint.data = b"x" * 1_500_000
        await memory.PutCheckpoint(request, metadata=tenant_a)
    sizes, token = [], ""
    while True:
        page = await memory.ListCheckpoints(
            memory_pb2.ListCheckpointsRequest(thread_id=thread, page_size=10, page_token=token),
            metadata=tenant_a,
        )
        sizes.append(len(page.checkpoints))
        token = page.next_page_token
        if not token:
            break
    assert sizes == [1, 1, 1]


async def test_copy_thread_copies_everything_once(memory: Stub, tenant_a: Metadata) -> None:
    source, target = f"t-{uid()}", f"t-{uid()}"
    ids = await _chain(memory, tenant_a, source, 3)
    await memory.PutCheckpointWrites(
        memory_pb2.PutCheckpointWritesRequest(
            thread_id=source, checkpoint_id=ids[-1], writes=[_write("t1", "ch", b"1")]
        ),
        metadata=tenant_a,
    )
    copied = await memory.CopyThread(
        memory_pb2.CopyThreadRequest(source_thread_id=source, target_thread_id=target),
        metadata=tenant_a,
    )
    assert copied.copied_checkpoints == 3
    assert await _ids(memory, tenant_a, target) == list(reversed(ids))
    latest = await memory.GetCheckpoint(
        memory_pb2.GetCheckpointRequest(thread_id=target), metadata=tenant_a
    )
    assert latest.checkpoint.parent_checkpoint_id == ids[-2]
    assert len(latest.pending_writes) == 1

    again = await rpc_error(
        memory.CopyThread(
            memory_pb2.CopyThreadRequest(source_thread_id=source, target_thread_id=target),
            metadata=tenant_a,
        )
    )
    assert again.code() == grpc.StatusCode.ALREADY_EXISTS
    missing = await rpc_error(
        memory.CopyThread(
            memory_pb2.CopyThreadRequest(
                source_thread_id=f"t-{uid()}", target_thread_id=f"t-{uid()}"
            ),
            metadata=tenant_a,
        )
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND


async def test_delete_for_runs_and_delete_thread_remove_writes_too(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    thread, run = f"t-{uid()}", f"run-{uid()}"
    await memory.PutCheckpoint(
        _checkpoint(thread, "c1", metadata={"run_id": run}), metadata=tenant_a
    )
    await memory.PutCheckpoint(_checkpoint(thread, "c2", parent="c1"), metadata=tenant_a)
    for checkpoint_id in ("c1", "c2"):
        await memory.PutCheckpointWrites(
            memory_pb2.PutCheckpointWritesRequest(
                thread_id=thread, checkpoint_id=checkpoint_id, writes=[_write("t", "ch", b"1")]
            ),
            metadata=tenant_a,
        )
    gone = await memory.DeleteCheckpointsForRuns(
        memory_pb2.DeleteCheckpointsForRunsRequest(run_ids=[run, "unknown"]), metadata=tenant_a
    )
    assert gone.deleted_checkpoints == 1
    assert await _ids(memory, tenant_a, thread) == ["c2"]
    writes = "SELECT count(*) FROM memory.checkpoint_writes WHERE thread_id = $1"
    assert await db.fetchval(writes, thread) == 1

    deleted = await memory.DeleteThread(
        memory_pb2.DeleteThreadRequest(thread_id=thread), metadata=tenant_a
    )
    assert deleted.deleted_checkpoints == 1
    assert await db.fetchval(writes, thread) == 0


async def test_prune_keeps_latest_per_namespace(memory: Stub, tenant_a: Metadata) -> None:
    thread = f"t-{uid()}"
    root = await _chain(memory, tenant_a, thread, 4)
    child = await _chain(memory, tenant_a, thread, 3, ns="child:1")
    pruned = await memory.PruneCheckpoints(
        memory_pb2.PruneCheckpointsRequest(thread_ids=[thread, thread], keep_latest=2),
        metadata=tenant_a,
    )
    assert pruned.deleted_checkpoints == 3
    assert sorted(await _ids(memory, tenant_a, thread)) == sorted(root[-2:] + child[-2:])


# ------------------------------------------------------------------ retention


@pytest.fixture(scope="module")
async def keep3(backends: Backends) -> AsyncIterator[Stub]:
    """A second Memory server that keeps only 3 checkpoints per thread and namespace."""
    settings = memory_settings(backends, AGENTMESH_MEMORY_CHECKPOINT_KEEP_LATEST="3")
    running: RunningServer = await start_server(settings.settings, await build_memory(*settings))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield cast("Stub", memory_pb2_grpc.MemoryServiceStub(channel))
    finally:
        await running.stop(0)


async def test_retention_keeps_the_latest_n_per_thread_and_namespace(
    keep3: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    thread = f"t-{uid()}"
    ids = [f"{i:08d}" for i in range(5)]
    for i, checkpoint_id in enumerate(ids):
        parent = ids[i - 1] if i else ""
        await keep3.PutCheckpoint(
            _checkpoint(thread, checkpoint_id, parent=parent), metadata=tenant_a
        )
        await keep3.PutCheckpointWrites(
            memory_pb2.PutCheckpointWritesRequest(
                thread_id=thread, checkpoint_id=checkpoint_id, writes=[_write("t", "ch", b"1")]
            ),
            metadata=tenant_a,
        )
    child = await _chain(keep3, tenant_a, thread, 2, ns="child:1")

    root = await keep3.ListCheckpoints(
        memory_pb2.ListCheckpointsRequest(thread_id=thread, checkpoint_ns=""), metadata=tenant_a
    )
    assert [t.checkpoint.checkpoint_id for t in root.checkpoints] == list(reversed(ids[-3:]))
    assert await _child_ids(keep3, tenant_a, thread) == list(reversed(child))
    # The pruned checkpoints took their writes with them.
    stored = await db.fetch(
        "SELECT checkpoint_id FROM memory.checkpoint_writes WHERE thread_id = $1", thread
    )
    assert sorted(row["checkpoint_id"] for row in stored) == ids[-3:]


async def _child_ids(stub: Stub, md: Metadata, thread: str) -> list[str]:
    listed = await stub.ListCheckpoints(
        memory_pb2.ListCheckpointsRequest(thread_id=thread, checkpoint_ns="child:1"), metadata=md
    )
    return [t.checkpoint.checkpoint_id for t in listed.checkpoints]


async def test_retention_keeps_the_ancestors_delta_channels_need(
    keep3: Stub, tenant_a: Metadata
) -> None:
    """A LangGraph DeltaChannel rebuilds its value from the writes of the ancestors back
    to its last snapshot; metadata counts them, and retention keeps that chain."""
    thread = f"t-{uid()}"
    ids = [f"{i:08d}" for i in range(11)]

    async def put(i: int, counters: dict[str, list[int]]) -> None:
        metadata: dict[str, Any] = {"step": i}
        if counters:  # LangGraph omits the key when every delta channel just snapshotted
            metadata["counters_since_delta_snapshot"] = counters
        parent = ids[i - 1] if i else ""
        await keep3.PutCheckpoint(
            _checkpoint(thread, ids[i], parent=parent, metadata=metadata), metadata=tenant_a
        )

    # Snapshot at the first checkpoint, then 7 supersteps of deltas: all 8 are needed.
    for i in range(8):
        await put(i, {"messages": [i, i]} if i else {})
    assert await _ids(keep3, tenant_a, thread) == list(reversed(ids[:8]))
    # Three fresh snapshots: the newest three need no history, the rest go.
    for i in range(8, 11):
        await put(i, {})
    assert await _ids(keep3, tenant_a, thread) == list(reversed(ids[8:]))


# --------------------------------------------------------------- the saver


class _State(TypedDict):
    log: Annotated[list[str], operator.add]


def _graph() -> StateGraph[_State, None, _State, _State]:
    def step(state: _State) -> dict[str, list[str]]:
        return {"log": [f"seen {len(state['log'])}"]}

    graph = StateGraph(_State, input_schema=_State, output_schema=_State)
    graph.add_node("step", step)
    graph.add_edge(START, "step")
    graph.add_edge("step", END)
    return graph


async def test_a_graph_resumes_its_thread_from_another_saver(memory_server: RunningServer) -> None:
    """Two savers (two agent replicas) on one thread: state survives in the service."""
    token = mint_token(SECRET, f"graph-{uid()}")
    config: Any = {"configurable": {"thread_id": f"t-{uid()}"}}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{memory_server.port}") as channel:
        first = _graph().compile(checkpointer=AgentmeshSaver(channel, token=token))
        await first.ainvoke(_State(log=["hi"]), config)
        second = _graph().compile(checkpointer=AgentmeshSaver(channel, token=token))
        result = await second.ainvoke(_State(log=["again"]), config)
        history = [s async for s in second.aget_state_history(config)]
    assert result["log"] == ["hi", "seen 1", "again", "seen 3"]
    assert len(history) >= 4


async def test_saver_forwards_the_served_calls_credential(memory_server: RunningServer) -> None:
    tenant = f"forward-{uid()}"
    authorization = f"Bearer {mint_token(SECRET, tenant)}"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{memory_server.port}") as channel:
        saver = AgentmeshSaver(channel)
        with pytest.raises(MissingCallContextError):
            await saver.aget_tuple({"configurable": {"thread_id": "t"}})
        bound = bind_call("req-1", tenant=tenant, authorization=authorization)
        try:
            assert await saver.aget_tuple({"configurable": {"thread_id": "t"}}) is None
        finally:
            reset_call(bound)


async def test_sync_methods_run_from_other_threads_only(memory_server: RunningServer) -> None:
    token = mint_token(SECRET, f"sync-{uid()}")
    thread_config: Any = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{memory_server.port}") as channel:
        saver = AgentmeshSaver(channel, token=token)
        with pytest.raises(asyncio.InvalidStateError):
            saver.get_tuple(thread_config)

        def in_a_worker() -> list[str]:
            stored = saver.put(thread_config, empty_checkpoint(), {"step": 0}, {})
            saver.put_writes(stored, [("ch", 1)], "task")
            found = saver.get_tuple(stored)
            assert found is not None
            assert found.pending_writes == [("task", "ch", 1)]
            return [t.config["configurable"]["checkpoint_id"] for t in saver.list(None)]

        assert len(await asyncio.to_thread(in_a_worker)) == 1


async def test_copy_errors_surface_as_value_errors(memory_server: RunningServer) -> None:
    token = mint_token(SECRET, f"copy-{uid()}")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{memory_server.port}") as channel:
        saver = AgentmeshSaver(channel, token=token)
        with pytest.raises(ValueError, match="has no checkpoints"):
            await saver.acopy_thread("missing", "target")
        with pytest.raises(ValueError, match="unknown prune strategy"):
            await saver.aprune(["t"], strategy="sometimes")
