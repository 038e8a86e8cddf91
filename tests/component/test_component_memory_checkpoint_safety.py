"""Checkpoints never run code: hostile values written through the public API are
refused by the service (serializations that revive objects by name) or, when they are
plain msgpack naming a callable, refused by ``AgentmeshSaver`` on load, running nothing.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import ormsgpack
import pytest
from langgraph.checkpoint.serde.jsonplus import EXT_CONSTRUCTOR_POS_ARGS

from agentmesh.core.server import RunningServer
from agentmesh.langgraph import AgentmeshSaver
from agentmesh.langgraph.serde import UnsafeCheckpointError
from agentmesh.v1 import memory_pb2
from component.conftest import Metadata, credentials
from component.memory_helpers import Stub, field_violations, uid


def _put(thread_id: str, value: memory_pb2.TypedValue) -> memory_pb2.PutCheckpointRequest:
    return memory_pb2.PutCheckpointRequest(
        checkpoint=memory_pb2.Checkpoint(
            thread_id=thread_id,
            checkpoint_id=f"1ef-{uid()}",
            checkpoint=value,
            metadata_json='{"source": "loop", "step": 0}',
        )
    )


def _hostile_checkpoint(marker: Path) -> bytes:
    """A checkpoint whose channel value, revived by a permissive serializer, runs a
    shell command that creates ``marker``."""
    system = ormsgpack.Ext(
        EXT_CONSTRUCTOR_POS_ARGS, ormsgpack.packb(("os", "system", [f"touch {marker}"]))
    )
    return ormsgpack.packb(
        {
            "v": 4,
            "id": "1ef-hostile",
            "ts": "2026-12-02T00:00:00+00:00",
            "channel_values": {"messages": system},
            "channel_versions": {},
            "versions_seen": {},
        }
    )


@pytest.mark.parametrize("type_", ["pickle", "cloudpickle", "dill"])
async def test_the_service_refuses_serializations_that_revive_code(
    memory: Stub, tenant_a: Metadata, type_: str
) -> None:
    thread_id = f"safety-{uid()}"
    value = memory_pb2.TypedValue(type=type_, data=b"\x80\x04N.")
    violations = await field_violations(
        memory.PutCheckpoint(_put(thread_id, value), metadata=tenant_a)
    )
    assert "pickle" in violations["checkpoint.checkpoint.type"]
    write = memory_pb2.PendingWrite(task_id="t", channel="c", value=value)
    violations = await field_violations(
        memory.PutCheckpointWrites(
            memory_pb2.PutCheckpointWritesRequest(
                thread_id=thread_id, checkpoint_id="1ef-x", writes=[write]
            ),
            metadata=tenant_a,
        )
    )
    assert list(violations) == ["writes[0].value.type"]
    listed = await memory.ListCheckpoints(
        memory_pb2.ListCheckpointsRequest(thread_id=thread_id), metadata=tenant_a
    )
    assert list(listed.checkpoints) == []  # nothing was stored


async def test_a_hostile_msgpack_checkpoint_is_refused_on_load_and_runs_nothing(
    memory: Stub, memory_server: RunningServer, tmp_path: Path
) -> None:
    tenant = f"safety-{uid()}"
    metadata = credentials(tenant)
    marker = tmp_path / "ran"
    thread_id = f"hostile-{uid()}"
    value = memory_pb2.TypedValue(type="msgpack", data=_hostile_checkpoint(marker))
    await memory.PutCheckpoint(_put(thread_id, value), metadata=metadata)

    token = metadata[0][1].removeprefix("Bearer ")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{memory_server.port}") as channel:
        saver = AgentmeshSaver(channel, token=token)
        config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
        with pytest.raises(UnsafeCheckpointError, match=r"os\.system"):
            await saver.aget_tuple(config)  # type: ignore[arg-type]
        with pytest.raises(UnsafeCheckpointError, match=r"os\.system"):
            [item async for item in saver.alist(config)]  # type: ignore[arg-type]
    assert not marker.exists()
