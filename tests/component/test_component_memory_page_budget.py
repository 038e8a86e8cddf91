"""Responses are bounded in bytes: list and search pages stop at the byte budget
(AGENTMESH_PAGE_MAX_BYTES) as well as at their page size and continue where they
stopped; items over their per-item size settings are INVALID_ARGUMENT; a page of
near-limit items listed at the largest page size leaves another tenant served."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from agentmesh.core.settings import ConfigError
from agentmesh.v1 import common_pb2, memory_pb2
from component.conftest import Backends, Metadata
from component.memory_helpers import Stub, expect_invalid, serve_memory, uid

BUDGET = 64 * 1024
ITEM = 20 * 1024
"""Items of ~20 KiB: three fit a 64 KiB page, so a page of 1,000 stops at three."""
LIMITS = {
    "AGENTMESH_PAGE_MAX_BYTES": str(BUDGET),
    "AGENTMESH_MEMORY_MESSAGE_MAX_BYTES": str(32 * 1024),
    "AGENTMESH_MEMORY_CHECKPOINT_MAX_BYTES": str(32 * 1024),
    "AGENTMESH_MEMORY_CHECKPOINT_WRITE_MAX_BYTES": str(32 * 1024),
    "AGENTMESH_MEMORY_STORE_VALUE_MAX_BYTES": str(32 * 1024),
    "AGENTMESH_MEMORY_JANITOR_INTERVAL_S": "0",
}


@pytest.fixture
async def small_pages(backends: Backends) -> AsyncIterator[Stub]:
    async with serve_memory(backends, **LIMITS) as stub:
        yield stub


async def _all_pages(
    fetch: Callable[[str], Awaitable[tuple[list[str], str]]],
) -> tuple[list[str], list[int]]:
    """Every item over all pages, and each page's length."""
    names: list[str] = []
    lengths: list[int] = []
    token = ""
    for _ in range(100):
        page, token = await fetch(token)
        names += page
        lengths.append(len(page))
        if not token:
            return names, lengths
    raise AssertionError("pages never ended")


def _text(i: int, size: int = ITEM) -> str:
    return f"{i:04d} " + "x" * (size - 5)


async def test_messages_page_at_the_byte_budget_and_continue(
    small_pages: Stub, tenant_a: Metadata
) -> None:
    session = await small_pages.CreateSession(
        memory_pb2.CreateSessionRequest(session=memory_pb2.Session()), metadata=tenant_a
    )
    for i in range(10):
        await small_pages.AppendMessages(
            memory_pb2.AppendMessagesRequest(
                parent=session.name,
                messages=[
                    memory_pb2.Message(
                        role=common_pb2.ROLE_USER, parts=[common_pb2.Part(text=_text(i))]
                    )
                ],
            ),
            metadata=tenant_a,
        )

    async def fetch(token: str) -> tuple[list[str], str]:
        got = await small_pages.ListMessages(
            memory_pb2.ListMessagesRequest(parent=session.name, page_size=1000, page_token=token),
            metadata=tenant_a,
        )
        return [m.parts[0].text[:4] for m in got.messages], got.next_page_token

    texts, lengths = await _all_pages(fetch)
    assert texts == [f"{i:04d}" for i in range(10)]  # all of them, in order, once
    assert max(lengths) == 3  # 3 x ~20 KiB fit 64 KiB, a fourth does not
    assert len(lengths) == 4


async def test_checkpoints_with_writes_page_at_the_byte_budget(
    small_pages: Stub, tenant_a: Metadata
) -> None:
    thread = f"budget-{uid()}"
    for i in range(6):
        checkpoint_id = f"c{i:02d}"
        await small_pages.PutCheckpoint(
            memory_pb2.PutCheckpointRequest(
                checkpoint=memory_pb2.Checkpoint(
                    thread_id=thread,
                    checkpoint_id=checkpoint_id,
                    checkpoint=memory_pb2.TypedValue(type="bytes", data=b"s" * (ITEM // 2)),
                )
            ),
            metadata=tenant_a,
        )
        # Half of each tuple's size is its pending write: the estimate counts writes too.
        await small_pages.PutCheckpointWrites(
            memory_pb2.PutCheckpointWritesRequest(
                thread_id=thread,
                checkpoint_id=checkpoint_id,
                writes=[
                    memory_pb2.PendingWrite(
                        task_id="t",
                        idx=0,
                        channel="messages",
                        value=memory_pb2.TypedValue(type="bytes", data=b"w" * (ITEM // 2)),
                    )
                ],
            ),
            metadata=tenant_a,
        )

    async def fetch(token: str) -> tuple[list[str], str]:
        got = await small_pages.ListCheckpoints(
            memory_pb2.ListCheckpointsRequest(thread_id=thread, page_size=1000, page_token=token),
            metadata=tenant_a,
        )
        for found in got.checkpoints:
            assert len(found.pending_writes) == 1
        return [c.checkpoint.checkpoint_id for c in got.checkpoints], got.next_page_token

    ids, lengths = await _all_pages(fetch)
    assert ids == [f"c{i:02d}" for i in reversed(range(6))]
    assert max(lengths) == 3


async def test_store_search_stops_at_the_budget_and_says_where_to_continue(
    small_pages: Stub, tenant_a: Metadata
) -> None:
    namespace = ["budget", uid()]
    for i in range(7):
        await small_pages.PutStoreItem(
            memory_pb2.PutStoreItemRequest(
                item=memory_pb2.StoreItem(
                    namespace=namespace,
                    key=f"k{i}",
                    value_json=json.dumps({"i": i, "blob": "y" * ITEM}),
                ),
            ),
            metadata=tenant_a,
        )
    seen: list[str] = []
    offset = 0
    pages = 0
    while True:
        got = await small_pages.SearchStoreItems(
            memory_pb2.SearchStoreItemsRequest(
                namespace_prefix=namespace, limit=1000, offset=offset
            ),
            metadata=tenant_a,
        )
        pages += 1
        assert len(got.items) <= 3
        seen += [item.key for item in got.items]
        if not got.next_offset:
            break
        assert got.next_offset == offset + len(got.items)
        offset = got.next_offset
    assert sorted(seen) == [f"k{i}" for i in range(7)]
    assert len(seen) == 7
    assert pages == 3


async def test_a_single_item_larger_than_the_page_is_sent_alone(
    backends: Backends, tenant_a: Metadata
) -> None:
    # A budget below one item: every page carries exactly one, and the list still ends.
    one_k = {
        f"AGENTMESH_MEMORY_{name}_MAX_BYTES": "1024"
        for name in ("MESSAGE", "CHECKPOINT", "CHECKPOINT_WRITE", "STORE_VALUE")
    }
    async with serve_memory(backends, AGENTMESH_PAGE_MAX_BYTES="1024", **one_k) as stub:
        session = await stub.CreateSession(
            memory_pb2.CreateSessionRequest(session=memory_pb2.Session()), metadata=tenant_a
        )
        await stub.AppendMessages(
            memory_pb2.AppendMessagesRequest(
                parent=session.name,
                messages=[
                    memory_pb2.Message(
                        role=common_pb2.ROLE_USER, parts=[common_pb2.Part(text=_text(i, 900))]
                    )
                    for i in range(3)
                ],
            ),
            metadata=tenant_a,
        )

        async def fetch(token: str) -> tuple[list[str], str]:
            got = await stub.ListMessages(
                memory_pb2.ListMessagesRequest(
                    parent=session.name, page_size=1000, page_token=token
                ),
                metadata=tenant_a,
            )
            return [m.parts[0].text[:4] for m in got.messages], got.next_page_token

        texts, lengths = await _all_pages(fetch)
        assert texts == ["0000", "0001", "0002"]
        assert lengths == [1, 1, 1]


@pytest.mark.parametrize(
    ("build", "fields"),
    [
        (
            lambda: memory_pb2.AppendMessagesRequest(
                parent="sessions/any",
                messages=[
                    memory_pb2.Message(
                        role=common_pb2.ROLE_USER, parts=[common_pb2.Part(text="m" * (33 * 1024))]
                    )
                ],
            ),
            ("messages[0]",),
        ),
        (
            lambda: memory_pb2.PutCheckpointRequest(
                checkpoint=memory_pb2.Checkpoint(
                    thread_id="t",
                    checkpoint_id="c",
                    checkpoint=memory_pb2.TypedValue(type="bytes", data=b"c" * (32 * 1024 + 1)),
                )
            ),
            ("checkpoint.checkpoint.data",),
        ),
        (
            lambda: memory_pb2.PutCheckpointWritesRequest(
                thread_id="t",
                checkpoint_id="c",
                writes=[
                    memory_pb2.PendingWrite(
                        task_id="t",
                        channel="c",
                        value=memory_pb2.TypedValue(type="bytes", data=b"w" * (32 * 1024 + 1)),
                    )
                ],
            ),
            ("writes[0].value.data",),
        ),
        (
            lambda: memory_pb2.PutStoreItemRequest(
                item=memory_pb2.StoreItem(
                    namespace=["n"], key="k", value_json=json.dumps({"v": "s" * (32 * 1024)})
                )
            ),
            ("item.value_json",),
        ),
    ],
    ids=["message", "checkpoint", "checkpoint-write", "store-value"],
)
async def test_items_over_their_size_setting_are_invalid(
    small_pages: Stub,
    tenant_a: Metadata,
    build: Callable[[], object],
    fields: tuple[str, ...],
) -> None:
    request = build()
    methods: dict[type, Callable[..., Awaitable[object]]] = {
        memory_pb2.AppendMessagesRequest: small_pages.AppendMessages,
        memory_pb2.PutCheckpointRequest: small_pages.PutCheckpoint,
        memory_pb2.PutCheckpointWritesRequest: small_pages.PutCheckpointWrites,
        memory_pb2.PutStoreItemRequest: small_pages.PutStoreItem,
    }
    await expect_invalid(methods[type(request)](request, metadata=tenant_a), *fields)


async def test_items_at_their_size_setting_are_stored(
    small_pages: Stub, tenant_a: Metadata
) -> None:
    thread = f"at-limit-{uid()}"
    await small_pages.PutCheckpoint(
        memory_pb2.PutCheckpointRequest(
            checkpoint=memory_pb2.Checkpoint(
                thread_id=thread,
                checkpoint_id="c",
                checkpoint=memory_pb2.TypedValue(type="bytes", data=b"c" * (32 * 1024)),
            )
        ),
        metadata=tenant_a,
    )
    got = await small_pages.GetCheckpoint(
        memory_pb2.GetCheckpointRequest(thread_id=thread), metadata=tenant_a
    )
    assert len(got.checkpoint.checkpoint.data) == 32 * 1024


async def test_near_limit_pages_leave_another_tenant_served(
    memory: Stub, tenant_a: Metadata, tenant_b: Metadata
) -> None:
    """Default settings: 40 messages near the per-message limit, listed at the largest
    page size again and again, while tenant B's reads keep answering within their
    deadline."""
    session = await memory.CreateSession(
        memory_pb2.CreateSessionRequest(session=memory_pb2.Session()), metadata=tenant_a
    )
    big = memory_pb2.Message(
        role=common_pb2.ROLE_USER, parts=[common_pb2.Part(text="z" * (250 * 1024))]
    )
    for _ in range(4):
        await memory.AppendMessages(
            memory_pb2.AppendMessagesRequest(parent=session.name, messages=[big] * 10),
            metadata=tenant_a,
        )
    other = await memory.CreateSession(
        memory_pb2.CreateSessionRequest(session=memory_pb2.Session()), metadata=tenant_b
    )

    async def heavy() -> list[int]:
        lengths = []
        for _ in range(3):
            token = ""
            while True:
                got = await memory.ListMessages(
                    memory_pb2.ListMessagesRequest(
                        parent=session.name, page_size=1000, page_token=token
                    ),
                    metadata=tenant_a,
                    timeout=30,
                )
                lengths.append(len(got.messages))
                token = got.next_page_token
                if not token:
                    break
        return lengths

    async def light() -> int:
        served = 0
        for _ in range(30):
            await memory.GetSession(
                memory_pb2.GetSessionRequest(name=other.name), metadata=tenant_b, timeout=5
            )
            served += 1
            await asyncio.sleep(0)
        return served

    lengths, served = await asyncio.gather(heavy(), light())
    assert served == 30
    # A page is at most the 2 MiB default budget: 8 messages of 250 KiB, never all 40.
    assert max(lengths) == 8
    assert sum(lengths) == 3 * 40


async def test_an_unanswerable_budget_is_a_config_error(backends: Backends) -> None:
    with pytest.raises(ConfigError, match="STORE_VALUE_MAX_BYTES"):
        async with serve_memory(
            backends,
            AGENTMESH_PAGE_MAX_BYTES=str(64 * 1024),
            AGENTMESH_MEMORY_MESSAGE_MAX_BYTES="1024",
            AGENTMESH_MEMORY_CHECKPOINT_MAX_BYTES="1024",
            AGENTMESH_MEMORY_CHECKPOINT_WRITE_MAX_BYTES="1024",
        ):
            pass


async def test_a_search_stops_at_the_budget_best_hits_first_and_says_so(
    small_pages: Stub, tenant_a: Metadata
) -> None:
    namespace = f"budget/{uid()}"
    for i in range(6):
        await small_pages.CreateMemory(
            memory_pb2.CreateMemoryRequest(
                memory=memory_pb2.Memory(
                    namespace=namespace,
                    # ~16 KiB of distinct text each: four fit 64 KiB, six do not.
                    content=f"note {i} " + " ".join(f"w{i}x{j}" for j in range(2000)),
                )
            ),
            metadata=tenant_a,
        )
    full = await small_pages.SearchMemories(
        memory_pb2.SearchMemoriesRequest(
            text="note w1x1", namespace_prefix=namespace, top_k=10, min_score=-1
        ),
        metadata=tenant_a,
    )
    assert full.truncated
    assert 1 <= len(full.results) < 6
    scores = [hit.score for hit in full.results]
    assert scores == sorted(scores, reverse=True)  # the best ones were kept
    few = await small_pages.SearchMemories(
        memory_pb2.SearchMemoriesRequest(
            text="note w1x1", namespace_prefix=namespace, top_k=1, min_score=-1
        ),
        metadata=tenant_a,
    )
    assert not few.truncated
    assert few.results[0].memory.name == full.results[0].memory.name
