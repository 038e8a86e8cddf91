"""Every length, size and count limit of decision, artifact, checkpoint and store fields,
exercised at its bound (stored) and one past it (INVALID_ARGUMENT on that field)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from google.protobuf import struct_pb2
from google.protobuf.message import Message

from agentmesh.memory.convert import struct_to_json
from agentmesh.v1 import common_pb2, memory_pb2
from component.conftest import Metadata
from component.memory_helpers import Stub, field_violations, uid


@dataclass(frozen=True)
class Case:
    method: str
    build: Callable[[int], Message]
    field: str
    bound: int

    @property
    def id(self) -> str:
        return f"{self.method}-{self.field}"


def _metadata(size: int) -> struct_pb2.Struct:
    """A Struct whose JSON, as the service measures it, is exactly ``size`` bytes."""
    value = struct_pb2.Struct()
    value.update({"k": ""})
    overhead = len(struct_to_json(value, field="m", max_bytes=1 << 30))
    value.update({"k": "m" * (size - overhead)})
    assert len(struct_to_json(value, field="m", max_bytes=1 << 30)) == size
    return value


def _json_object(size: int) -> str:
    """A JSON object text of exactly ``size`` bytes."""
    return '{"k":"' + "j" * (size - 8) + '"}'


def _decision(**fields: Any) -> memory_pb2.CreateDecisionRequest:
    base: dict[str, Any] = {"agent": "agents/limits", "chosen_action": "agents/limits"}
    return memory_pb2.CreateDecisionRequest(decision=memory_pb2.Decision(**{**base, **fields}))


def _candidate(**fields: Any) -> common_pb2.ScoredCandidate:
    return common_pb2.ScoredCandidate(**{"name": "c", "score": 0.5, **fields})


def _artifact(**fields: Any) -> memory_pb2.PutArtifactRequest:
    base: dict[str, Any] = {"name": f"artifacts/limits-{uid()}", "media_type": "text/plain"}
    return memory_pb2.PutArtifactRequest(artifact=memory_pb2.Artifact(**{**base, **fields}))


def _checkpoint(**fields: Any) -> memory_pb2.PutCheckpointRequest:
    base: dict[str, Any] = {
        "thread_id": f"limits-{uid()}",
        "checkpoint_id": "c1",
        "checkpoint": memory_pb2.TypedValue(type="json", data=b"{}"),
    }
    return memory_pb2.PutCheckpointRequest(checkpoint=memory_pb2.Checkpoint(**{**base, **fields}))


def _writes(**fields: Any) -> memory_pb2.PutCheckpointWritesRequest:
    base: dict[str, Any] = {"thread_id": f"limits-{uid()}", "checkpoint_id": "c1"}
    return memory_pb2.PutCheckpointWritesRequest(**{**base, **fields})


def _write(index: int = 0, **fields: Any) -> memory_pb2.PendingWrite:
    base: dict[str, Any] = {
        "task_id": "t",
        "idx": index,
        "channel": "c",
        "value": memory_pb2.TypedValue(type="json", data=b"1"),
    }
    return memory_pb2.PendingWrite(**{**base, **fields})


def _item(**fields: Any) -> memory_pb2.PutStoreItemRequest:
    base: dict[str, Any] = {"namespace": ["limits", uid()], "key": "k", "value_json": "{}"}
    return memory_pb2.PutStoreItemRequest(item=memory_pb2.StoreItem(**{**base, **fields}))


KIB = 1024
CASES = [
    # decisions
    Case(
        "CreateDecision",
        lambda n: _decision(input_summary="i" * n),
        "decision.input_summary",
        4 * KIB,
    ),
    Case("CreateDecision", lambda n: _decision(reasoning="r" * n), "decision.reasoning", 16 * KIB),
    Case("CreateDecision", lambda n: _decision(outcome="o" * n), "decision.outcome", 4 * KIB),
    Case(
        "CreateDecision", lambda n: _decision(chosen_action="a" * n), "decision.chosen_action", KIB
    ),
    Case(
        "CreateDecision",
        lambda n: _decision(candidates=[_candidate(name="n" * n)]),
        "decision.candidates[0].name",
        KIB,
    ),
    Case(
        "CreateDecision",
        lambda n: _decision(candidates=[_candidate(reason="w" * n)]),
        "decision.candidates[0].reason",
        KIB,
    ),
    Case(
        "CreateDecision",
        lambda n: _decision(candidates=[_candidate(name=f"c{i}") for i in range(n)]),
        "decision.candidates",
        100,
    ),
    Case("CreateDecision", lambda n: _decision(tools=["t" * n]), "decision.tools[0]", KIB),
    Case(
        "CreateDecision",
        lambda n: _decision(tools=[f"t{i}" for i in range(n)]),
        "decision.tools",
        100,
    ),
    Case(
        "CreateDecision", lambda n: _decision(metadata=_metadata(n)), "decision.metadata", 16 * KIB
    ),
    # artifacts
    Case("PutArtifact", lambda n: _artifact(text="x" * n), "artifact.text", 2 * KIB * KIB),
    Case(
        "PutArtifact",
        lambda n: _artifact(text="x", metadata=_metadata(n)),
        "artifact.metadata",
        16 * KIB,
    ),
    # checkpoints
    Case("PutCheckpoint", lambda n: _checkpoint(thread_id="t" * n), "checkpoint.thread_id", 512),
    Case(
        "PutCheckpoint",
        lambda n: _checkpoint(checkpoint_id="c" * n),
        "checkpoint.checkpoint_id",
        512,
    ),
    Case(
        "PutCheckpoint",
        lambda n: _checkpoint(checkpoint_ns="n" * n),
        "checkpoint.checkpoint_ns",
        4 * KIB,
    ),
    Case(
        "PutCheckpoint",
        lambda n: _checkpoint(metadata_json=_json_object(n)),
        "checkpoint.metadata_json",
        256 * KIB,
    ),
    Case(
        "PutCheckpointWrites",
        lambda n: _writes(writes=[_write(i) for i in range(n)]),
        "writes",
        10_000,
    ),
    Case(
        "PutCheckpointWrites",
        lambda n: _writes(writes=[_write(task_id="t" * n)]),
        "writes[0].task_id",
        512,
    ),
    Case(
        "PutCheckpointWrites",
        lambda n: _writes(writes=[_write(channel="c" * n)]),
        "writes[0].channel",
        512,
    ),
    # store items
    Case("PutStoreItem", lambda n: _item(key="k" * n), "item.key", KIB),
    Case(
        "PutStoreItem", lambda n: _item(namespace=[f"l{i}" for i in range(n)]), "item.namespace", 32
    ),
    Case("PutStoreItem", lambda n: _item(namespace=["l" * n]), "item.namespace[0]", 256),
    Case("PutStoreItem", lambda n: _item(value_json=_json_object(n)), "item.value_json", KIB * KIB),
    Case(
        "PutStoreItem",
        lambda n: memory_pb2.PutStoreItemRequest(
            item=_item().item, index_fields=[f"f{i}" for i in range(n)]
        ),
        "index_fields",
        32,
    ),
    Case(
        "SearchStoreItems",
        lambda n: memory_pb2.SearchStoreItemsRequest(query=("q " * n)[:n]),
        "query",
        8 * KIB,
    ),
    Case("SearchStoreItems", lambda n: memory_pb2.SearchStoreItemsRequest(limit=n), "limit", 1000),
    Case(
        "SearchStoreItems",
        lambda n: memory_pb2.SearchStoreItemsRequest(
            filter_json=json.dumps({f"f{i}": i for i in range(n)})
        ),
        "filter_json",
        32,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_a_limit_holds_at_its_bound_and_refuses_one_past(
    memory: Stub, tenant_a: Metadata, case: Case
) -> None:
    call: Callable[..., Any] = getattr(memory, case.method)
    await call(case.build(case.bound), metadata=tenant_a, timeout=30)
    violations = await field_violations(
        call(case.build(case.bound + 1), metadata=tenant_a, timeout=30)
    )
    assert case.field in violations, violations
