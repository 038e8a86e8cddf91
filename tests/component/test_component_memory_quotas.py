"""Per-tenant storage quotas: a tenant at its quota of a kind is RESOURCE_EXHAUSTED
with QuotaFailure and nothing is written; another tenant is not affected; deleting
makes room again."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import cast

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agentmesh.v1 import common_pb2, memory_pb2
from component.conftest import Backends, Metadata, credentials
from component.memory_helpers import Stub, error_info, expect_error, serve_memory, uid

QUOTAS = {
    "AGENTMESH_MEMORY_QUOTA_REFRESH_S": "0",  # measured before every write: deterministic
    "AGENTMESH_MEMORY_QUOTA_SESSIONS_ROWS": "3",
    "AGENTMESH_MEMORY_QUOTA_STORE_ITEMS_BYTES": str(8 * 1024),
    "AGENTMESH_MEMORY_QUOTA_MESSAGES_ROWS": "5",
    "AGENTMESH_MEMORY_QUOTA_MEMORIES_ROWS": "2",
    "AGENTMESH_MEMORY_QUOTA_ARTIFACTS_BYTES": "1000",
    "AGENTMESH_MEMORY_QUOTA_CHECKPOINTS_BYTES": str(4 * 1024),
    "AGENTMESH_MEMORY_JANITOR_INTERVAL_S": "0",
}


@pytest.fixture
async def quota(backends: Backends) -> AsyncIterator[Stub]:
    async with serve_memory(backends, **QUOTAS) as stub:
        yield stub


@pytest.fixture
def fresh() -> tuple[Metadata, Metadata]:
    """Two tenants of their own: quotas count everything a tenant stores."""
    return credentials(f"quota-a-{uid()}"), credentials(f"quota-b-{uid()}")


def _quota_failure(error: grpc.aio.AioRpcError) -> error_details_pb2.QuotaFailure:
    status = rpc_status.from_call(cast("grpc.Call", error))
    assert status is not None
    failure = error_details_pb2.QuotaFailure()
    assert any(detail.Unpack(failure) for detail in status.details)
    return failure


async def _over(call: object, metric: str) -> None:
    error = await expect_error(call, grpc.StatusCode.RESOURCE_EXHAUSTED)  # type: ignore[arg-type]
    assert error_info(error).reason == "TENANT_QUOTA_EXCEEDED"
    (violation,) = _quota_failure(error).violations
    assert violation.quota_metric == f"agentmesh.dev/{metric}"


def _session() -> memory_pb2.CreateSessionRequest:
    return memory_pb2.CreateSessionRequest(session=memory_pb2.Session())


async def test_the_session_row_quota_holds_per_tenant_and_frees_on_delete(
    quota: Stub, fresh: tuple[Metadata, Metadata]
) -> None:
    a, b = fresh
    made = [await quota.CreateSession(_session(), metadata=a) for _ in range(3)]
    await _over(quota.CreateSession(_session(), metadata=a), "memory_sessions_rows")
    listed = await quota.ListSessions(memory_pb2.ListSessionsRequest(), metadata=a)
    assert len(listed.sessions) == 3  # the refused create wrote nothing
    # Another tenant has its own quota.
    await quota.CreateSession(_session(), metadata=b)
    # A soft-deleted session still counts: it can be undeleted until it is purged.
    await quota.DeleteSession(memory_pb2.DeleteSessionRequest(name=made[0].name), metadata=a)
    await _over(quota.CreateSession(_session(), metadata=a), "memory_sessions_rows")


async def test_messages_memories_store_artifacts_and_checkpoints_have_quotas(
    quota: Stub, fresh: tuple[Metadata, Metadata]
) -> None:
    a, b = fresh
    session = await quota.CreateSession(_session(), metadata=a)
    message = memory_pb2.Message(role=common_pb2.ROLE_USER, parts=[common_pb2.Part(text="hi")])
    await quota.AppendMessages(
        memory_pb2.AppendMessagesRequest(parent=session.name, messages=[message] * 4),
        metadata=a,
    )
    # A batch that would cross the quota is refused whole.
    await _over(
        quota.AppendMessages(
            memory_pb2.AppendMessagesRequest(parent=session.name, messages=[message] * 2),
            metadata=a,
        ),
        "memory_messages_rows",
    )
    await quota.AppendMessages(
        memory_pb2.AppendMessagesRequest(parent=session.name, messages=[message]), metadata=a
    )

    for i in range(2):
        await quota.CreateMemory(
            memory_pb2.CreateMemoryRequest(
                memory=memory_pb2.Memory(namespace="q/n", content=f"distinct fact number {i}")
            ),
            metadata=a,
        )
    await _over(
        quota.CreateMemory(
            memory_pb2.CreateMemoryRequest(
                memory=memory_pb2.Memory(namespace="q/n", content="one more fact")
            ),
            metadata=a,
        ),
        "memory_memories_rows",
    )

    def item(key: str) -> memory_pb2.PutStoreItemRequest:
        value = json.dumps({"blob": "x" * 3000})
        return memory_pb2.PutStoreItemRequest(
            item=memory_pb2.StoreItem(namespace=["q"], key=key, value_json=value)
        )

    # Values of 3 KB are stored compressed: bytes are what storage holds, so fill with
    # more items than the raw size suggests and expect the quota to hold at some point.
    refused = None
    for i in range(200):
        try:
            await quota.PutStoreItem(item(f"k{i}"), metadata=a)
        except grpc.aio.AioRpcError as error:
            refused = error
            break
    assert refused is not None
    assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _quota_failure(refused).violations[0].quota_metric == (
        "agentmesh.dev/memory_store_items_bytes"
    )
    # Deleting makes room again.
    await quota.DeleteStoreItem(
        memory_pb2.DeleteStoreItemRequest(namespace=["q"], key="k0"), metadata=a
    )
    await quota.DeleteStoreItem(
        memory_pb2.DeleteStoreItemRequest(namespace=["q"], key="k1"), metadata=a
    )
    await quota.PutStoreItem(item("again"), metadata=a)

    await quota.PutArtifact(
        memory_pb2.PutArtifactRequest(
            artifact=memory_pb2.Artifact(
                name="artifacts/quota-one", media_type="text/plain", text="t" * 900
            )
        ),
        metadata=a,
    )
    await _over(
        quota.PutArtifact(
            memory_pb2.PutArtifactRequest(
                artifact=memory_pb2.Artifact(
                    name="artifacts/quota-two", media_type="text/plain", text="t" * 200
                )
            ),
            metadata=a,
        ),
        "memory_artifacts_bytes",
    )

    state = memory_pb2.TypedValue(type="bytes", data=os.urandom(3000))  # incompressible
    await quota.PutCheckpoint(
        memory_pb2.PutCheckpointRequest(
            checkpoint=memory_pb2.Checkpoint(thread_id="q", checkpoint_id="c1", checkpoint=state)
        ),
        metadata=a,
    )
    await _over(
        quota.PutCheckpoint(
            memory_pb2.PutCheckpointRequest(
                checkpoint=memory_pb2.Checkpoint(
                    thread_id="q", checkpoint_id="c2", checkpoint=state
                )
            ),
            metadata=a,
        ),
        "memory_checkpoints_bytes",
    )
    # Tenant B stores all of these kinds untouched by A's usage.
    other = await quota.CreateSession(_session(), metadata=b)
    await quota.AppendMessages(
        memory_pb2.AppendMessagesRequest(parent=other.name, messages=[message] * 5), metadata=b
    )
    await quota.PutStoreItem(item("b"), metadata=b)
    await quota.PutCheckpoint(
        memory_pb2.PutCheckpointRequest(
            checkpoint=memory_pb2.Checkpoint(thread_id="q", checkpoint_id="c1", checkpoint=state)
        ),
        metadata=b,
    )


async def test_a_create_that_finds_its_id_taken_uses_no_quota(
    backends: Backends, fresh: tuple[Metadata, Metadata]
) -> None:
    """Measured rarely (the usage cache answers): a client that creates an existing
    session on every call (the Conductor with create_session) must not use up the
    quota; nor a repeated request_id."""
    a, _ = fresh
    cached = {**QUOTAS, "AGENTMESH_MEMORY_QUOTA_REFRESH_S": "3600"}
    async with serve_memory(backends, **cached) as stub:
        first = await stub.CreateSession(
            memory_pb2.CreateSessionRequest(
                session=memory_pb2.Session(), session_id="kept", request_id="once"
            ),
            metadata=a,
        )
        for _ in range(5):
            await expect_error(
                stub.CreateSession(
                    memory_pb2.CreateSessionRequest(
                        session=memory_pb2.Session(), session_id="kept"
                    ),
                    metadata=a,
                ),
                grpc.StatusCode.ALREADY_EXISTS,
            )
            again = await stub.CreateSession(
                memory_pb2.CreateSessionRequest(
                    session=memory_pb2.Session(), session_id="kept", request_id="once"
                ),
                metadata=a,
            )
            assert again.name == first.name
        # Two more fit the quota of three; the fourth does not.
        await stub.CreateSession(_session(), metadata=a)
        await stub.CreateSession(_session(), metadata=a)
        await _over(stub.CreateSession(_session(), metadata=a), "memory_sessions_rows")
