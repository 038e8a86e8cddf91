"""The LangGraph store RPCs over real gRPC and PostgreSQL, and AgentmeshStore on them."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest
from google.protobuf import duration_pb2

from agentmesh.core.server import RunningServer
from agentmesh.langgraph import AgentmeshStore
from agentmesh.v1 import memory_pb2

# `component.conftest`, not `conftest`: the name mypy resolves too (mypy_path has tests/).
from component.conftest import Metadata, credentials
from component.memory_helpers import Stub, field_violations, rpc_error, unique

pytestmark = pytest.mark.component


def _fresh_tenant() -> tuple[str, Metadata]:
    """A tenant of its own, so searches and listings see only this test's items."""
    tenant = unique("store")
    return tenant, credentials(tenant)


def _put(
    namespace: list[str],
    key: str,
    value: dict[str, Any],
    *,
    index_fields: list[str] | None = None,
    ttl_s: float | None = None,
) -> memory_pb2.PutStoreItemRequest:
    request = memory_pb2.PutStoreItemRequest(
        item=memory_pb2.StoreItem(namespace=namespace, key=key, value_json=json.dumps(value)),
        index_fields=index_fields or [],
    )
    if ttl_s is not None:
        request.ttl.CopyFrom(duration_pb2.Duration(seconds=int(ttl_s)))
    return request


async def _search(stub: Stub, md: Metadata, **fields: Any) -> list[str]:
    found = await stub.SearchStoreItems(memory_pb2.SearchStoreItemsRequest(**fields), metadata=md)
    return [item.key for item in found.items]


async def _namespaces(stub: Stub, md: Metadata, **fields: Any) -> list[tuple[str, ...]]:
    found = await stub.ListStoreNamespaces(
        memory_pb2.ListStoreNamespacesRequest(**fields), metadata=md
    )
    return [tuple(ns.labels) for ns in found.namespaces]


async def test_put_get_update_delete(memory: Stub) -> None:
    _, md = _fresh_tenant()
    ns = ["users", "u1"]
    first = await memory.PutStoreItem(_put(ns, "prefs", {"seat": "aisle", "n": 1}), metadata=md)
    second = await memory.PutStoreItem(_put(ns, "prefs", {"seat": "window", "n": 2}), metadata=md)
    assert second.create_time == first.create_time
    assert second.update_time.ToDatetime() >= first.update_time.ToDatetime()

    got = await memory.GetStoreItem(
        memory_pb2.GetStoreItemRequest(namespace=ns, key="prefs"), metadata=md
    )
    assert json.loads(got.value_json) == {"seat": "window", "n": 2}
    assert not got.HasField("score")

    await memory.DeleteStoreItem(
        memory_pb2.DeleteStoreItemRequest(namespace=ns, key="prefs"), metadata=md
    )
    await memory.DeleteStoreItem(  # deleting again is fine
        memory_pb2.DeleteStoreItemRequest(namespace=ns, key="prefs"), metadata=md
    )
    gone = await rpc_error(
        memory.GetStoreItem(memory_pb2.GetStoreItemRequest(namespace=ns, key="prefs"), metadata=md)
    )
    assert gone.code() == grpc.StatusCode.NOT_FOUND


async def test_another_tenant_sees_and_touches_nothing(
    memory: Stub, tenant_a: Metadata, tenant_b: Metadata
) -> None:
    ns = ["isolation", uuid.uuid4().hex[:8]]
    await memory.PutStoreItem(_put(ns, "k", {"secret": "a's"}), metadata=tenant_a)

    hidden = await rpc_error(
        memory.GetStoreItem(
            memory_pb2.GetStoreItemRequest(namespace=ns, key="k"), metadata=tenant_b
        )
    )
    assert hidden.code() == grpc.StatusCode.NOT_FOUND
    assert await _search(memory, tenant_b, namespace_prefix=ns) == []
    assert await _search(memory, tenant_b, namespace_prefix=ns, query="secret") == []
    assert await _namespaces(memory, tenant_b, prefix=ns) == []
    await memory.DeleteStoreItem(
        memory_pb2.DeleteStoreItemRequest(namespace=ns, key="k"), metadata=tenant_b
    )
    assert await _search(memory, tenant_a, namespace_prefix=ns) == ["k"]


async def test_bad_requests_are_invalid_argument_with_fields(
    memory: Stub, tenant_a: Metadata
) -> None:
    def put(**fields: Any) -> Awaitable[memory_pb2.StoreItem]:
        return memory.PutStoreItem(memory_pb2.PutStoreItemRequest(**fields), metadata=tenant_a)

    item = memory_pb2.StoreItem
    assert set(await field_violations(put(item=item(value_json="{}")))) == {
        "item.namespace",
        "item.key",
    }
    assert "item.namespace[1]" in await field_violations(
        put(item=item(namespace=["a", ""], key="k", value_json="{}"))
    )
    assert "item.namespace[0]" in await field_violations(
        put(item=item(namespace=["*"], key="k", value_json="{}"))
    )
    for bad_json in ("", "[1]", "{nope", '{"x": NaN}', '{"x": "\\u0000"}'):
        assert "item.value_json" in await field_violations(
            put(item=item(namespace=["a"], key="k", value_json=bad_json))
        ), bad_json
    big = json.dumps({"x": "y" * (1024 * 1024)})
    assert "item.value_json" in await field_violations(
        put(item=item(namespace=["a"], key="k", value_json=big))
    )
    assert "index_fields" in await field_violations(
        memory.PutStoreItem(_put(["a"], "k", {}, index_fields=["$none", "x"]), metadata=tenant_a)
    )
    negative = _put(["a"], "k", {})
    negative.ttl.CopyFrom(duration_pb2.Duration(seconds=-5))
    assert "ttl" in await field_violations(memory.PutStoreItem(negative, metadata=tenant_a))

    def search(**fields: Any) -> Awaitable[memory_pb2.SearchStoreItemsResponse]:
        return memory.SearchStoreItems(
            memory_pb2.SearchStoreItemsRequest(**fields), metadata=tenant_a
        )

    assert "limit" in await field_violations(search(limit=5000))
    assert "offset" in await field_violations(search(offset=-1))
    assert "filter_json" in await field_violations(search(filter_json="[]"))
    assert "filter_json" in await field_violations(search(filter_json='{"a": {"$like": 1}}'))
    assert "max_depth" in await field_violations(
        memory.ListStoreNamespaces(
            memory_pb2.ListStoreNamespacesRequest(max_depth=-1), metadata=tenant_a
        )
    )
    assert "key" in await field_violations(
        memory.GetStoreItem(memory_pb2.GetStoreItemRequest(namespace=["a"]), metadata=tenant_a)
    )


async def test_search_by_prefix_filter_and_meaning(memory: Stub) -> None:
    _, md = _fresh_tenant()
    items = [
        (["docs", "u1"], "flight", {"text": "I prefer aisle seats on long flights", "stars": 5}),
        (["docs", "u1"], "money", {"text": "quarterly revenue grew by ten percent", "stars": 3}),
        (["docs", "u2"], "seats", {"text": "prefers aisle seats on flights", "stars": 4}),
        (["other"], "x", {"text": "aisle seats flights", "stars": 1}),
    ]
    for ns, key, value in items:
        await memory.PutStoreItem(_put(ns, key, value), metadata=md)
    await memory.PutStoreItem(
        _put(["docs", "u2"], "hidden", {"text": "aisle seats"}, index_fields=["$none"]),
        metadata=md,
    )

    # Without a query: newest first, under the prefix only.
    assert await _search(memory, md, namespace_prefix=["docs"]) == [
        "hidden",
        "seats",
        "money",
        "flight",
    ]
    assert await _search(memory, md, namespace_prefix=["docs", "u1"]) == ["money", "flight"]
    assert await _search(memory, md, namespace_prefix=["docs"], limit=2, offset=1) == [
        "seats",
        "money",
    ]
    # Filters: containment, and LangGraph's comparison operators.
    assert await _search(memory, md, filter_json='{"stars": 5}') == ["flight"]
    assert await _search(memory, md, filter_json='{"stars": {"$gte": 4}}') == ["seats", "flight"]
    # A missing field is "not equal", but never less than anything.
    assert await _search(
        memory, md, namespace_prefix=["docs"], filter_json='{"stars": {"$ne": 3}}'
    ) == ["hidden", "seats", "flight"]
    assert await _search(
        memory, md, namespace_prefix=["docs"], filter_json='{"stars": {"$ne": 3, "$lt": 5}}'
    ) == ["seats"]
    # By meaning: the unindexed item never matches a query; scores are ordered.
    found = await memory.SearchStoreItems(
        memory_pb2.SearchStoreItemsRequest(
            namespace_prefix=["docs"], query="aisle seat on a flight", limit=3
        ),
        metadata=md,
    )
    keys = [item.key for item in found.items]
    assert "hidden" not in keys
    assert keys[-1] == "money"
    scores = [item.score for item in found.items]
    assert scores == sorted(scores, reverse=True)
    assert all(item.HasField("score") for item in found.items)


async def test_index_fields_choose_what_is_embedded(memory: Stub) -> None:
    _, md = _fresh_tenant()
    value = {"title": "quarterly revenue report", "body": "aisle seats on flights"}
    await memory.PutStoreItem(_put(["n"], "by-title", value, index_fields=["title"]), metadata=md)
    await memory.PutStoreItem(_put(["n"], "by-body", value, index_fields=["body"]), metadata=md)
    assert (await _search(memory, md, query="revenue report"))[0] == "by-title"
    assert (await _search(memory, md, query="aisle seats flights"))[0] == "by-body"


async def test_list_namespaces_by_prefix_suffix_depth(memory: Stub) -> None:
    _, md = _fresh_tenant()
    for ns in (["a", "b", "c"], ["a", "b", "d"], ["a", "x", "c"], ["z", "c"], ["a"]):
        await memory.PutStoreItem(_put(ns, "k", {}), metadata=md)
    assert await _namespaces(memory, md) == [
        ("a",),
        ("a", "b", "c"),
        ("a", "b", "d"),
        ("a", "x", "c"),
        ("z", "c"),
    ]
    assert await _namespaces(memory, md, prefix=["a", "b"]) == [("a", "b", "c"), ("a", "b", "d")]
    assert await _namespaces(memory, md, suffix=["c"]) == [
        ("a", "b", "c"),
        ("a", "x", "c"),
        ("z", "c"),
    ]
    assert await _namespaces(memory, md, prefix=["a", "*", "c"]) == [
        ("a", "b", "c"),
        ("a", "x", "c"),
    ]
    assert await _namespaces(memory, md, prefix=["a"], suffix=["*", "c"]) == [
        ("a", "b", "c"),
        ("a", "x", "c"),
    ]
    assert await _namespaces(memory, md, max_depth=2) == [
        ("a",),
        ("a", "b"),
        ("a", "x"),
        ("z", "c"),
    ]
    assert await _namespaces(memory, md, max_depth=2, limit=2, offset=1) == [("a", "b"), ("a", "x")]


async def test_expired_items_vanish_and_reads_can_refresh(memory: Stub, db: asyncpg.Pool) -> None:
    tenant, md = _fresh_tenant()
    await memory.PutStoreItem(_put(["t"], "short", {"v": 1}, ttl_s=3600), metadata=md)
    await memory.PutStoreItem(_put(["t"], "kept", {"v": 2}, ttl_s=3600), metadata=md)
    expire = "SELECT expire_time - now() FROM memory.store_items WHERE tenant = $1 AND key = $2"
    # Make time pass: one item is about to expire, the other has expired.
    await db.execute(
        "UPDATE memory.store_items SET expire_time = now() + interval '5 seconds'"
        " WHERE tenant = $1 AND key = 'kept'",
        tenant,
    )
    await db.execute(
        "UPDATE memory.store_items SET expire_time = now() - interval '1 second'"
        " WHERE tenant = $1 AND key = 'short'",
        tenant,
    )
    expired = await rpc_error(
        memory.GetStoreItem(
            memory_pb2.GetStoreItemRequest(namespace=["t"], key="short"), metadata=md
        )
    )
    assert expired.code() == grpc.StatusCode.NOT_FOUND
    assert await _search(memory, md) == ["kept"]

    await memory.GetStoreItem(
        memory_pb2.GetStoreItemRequest(namespace=["t"], key="kept"), metadata=md
    )
    assert await db.fetchval(expire, tenant, "kept") < timedelta(seconds=10)  # plain read
    await memory.GetStoreItem(
        memory_pb2.GetStoreItemRequest(namespace=["t"], key="kept", refresh_ttl=True), metadata=md
    )
    assert await db.fetchval(expire, tenant, "kept") > timedelta(minutes=59)
    # The next write of the tenant sweeps what expired.
    await memory.PutStoreItem(_put(["t"], "other", {}), metadata=md)
    assert await db.fetchval(expire, tenant, "short") is None


async def test_agentmesh_store_through_langgraphs_api(memory_server: RunningServer) -> None:
    _, md = _fresh_tenant()
    token = md[0][1].removeprefix("Bearer ")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{memory_server.port}") as channel:
        store = AgentmeshStore(channel, token=token, ttl={"default_ttl": 60})
        await store.aput(("users", "u1"), "prefs", {"seat": "aisle", "count": 3})
        await store.aput(("users", "u1"), "raw", {"blob": "x"}, index=False, ttl=None)
        item = await store.aget(("users", "u1"), "prefs")
        assert item is not None
        assert item.value == {"seat": "aisle", "count": 3}
        assert item.namespace == ("users", "u1")
        assert item.created_at.tzinfo is not None
        assert await store.aget(("users", "u1"), "missing") is None

        hits = await store.asearch(("users",), query="aisle seat")
        assert [hit.key for hit in hits] == ["prefs"]
        assert hits[0].score is not None
        filtered = await store.asearch(("users",), filter={"count": {"$gt": 2}})
        assert [hit.key for hit in filtered] == ["prefs"]
        assert await store.alist_namespaces(prefix=("users",)) == [("users", "u1")]
        assert await store.alist_namespaces(suffix=("u1",), max_depth=1) == [("users",)]

        await store.adelete(("users", "u1"), "raw")
        assert await store.aget(("users", "u1"), "raw") is None

        with pytest.raises(asyncio.InvalidStateError):
            store.get(("users", "u1"), "prefs")
        in_thread = await asyncio.to_thread(store.get, ("users", "u1"), "prefs")
        assert in_thread is not None
        assert in_thread.key == "prefs"
