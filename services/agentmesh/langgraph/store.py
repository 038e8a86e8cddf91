"""``AgentmeshStore``: LangGraph's ``BaseStore`` over MemoryService.

Long-term documents shared across threads, scoped to the caller's tenant. The
service embeds each item's indexed text with its own embedder, so semantic search
(``query=``) works without an embedding model in the agent process. TTLs are in
minutes, as LangGraph's API has them; reads refresh them when asked (``get``), but
searches do not refresh the TTLs of the items they return (the contract has no
such flag).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, timedelta
from typing import Final

import grpc
from google.protobuf import duration_pb2

from agentmesh.core.settings import Settings
from agentmesh.langgraph._client import (
    DEFAULT_TIMEOUT_S,
    MemoryClient,
    TokenSource,
    open_memory_channel,
    run_sync,
    running_loop_or_none,
)
from agentmesh.v1 import memory_pb2
from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    validate_op_namespace,
)

NO_INDEX: Final = "$none"
"""``index_fields`` value that tells the service not to embed an item."""


def _item(stored: memory_pb2.StoreItem) -> Item:
    return Item(
        namespace=tuple(stored.namespace),
        key=stored.key,
        value=json.loads(stored.value_json),
        created_at=stored.create_time.ToDatetime(tzinfo=UTC),
        updated_at=stored.update_time.ToDatetime(tzinfo=UTC),
    )


def _search_item(stored: memory_pb2.StoreItem) -> SearchItem:
    return SearchItem(
        namespace=tuple(stored.namespace),
        key=stored.key,
        value=json.loads(stored.value_json),
        created_at=stored.create_time.ToDatetime(tzinfo=UTC),
        updated_at=stored.update_time.ToDatetime(tzinfo=UTC),
        score=stored.score if stored.HasField("score") else None,
    )


class AgentmeshStore(BaseStore):
    """LangGraph store backed by MemoryService.

    Args:
        channel: a ``grpc.aio`` channel to MemoryService (see :meth:`connect`).
        token: bearer token (or a function returning one); None forwards the
            authorization of the RPC being served.
        timeout_s: deadline of each call.
        index_fields: JSON paths to embed when a put names none (None: the whole item).
        ttl: LangGraph TTL config: ``default_ttl`` (minutes) for puts that give none,
            ``refresh_on_read`` default for gets.
    """

    supports_ttl = True

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        token: TokenSource = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        index_fields: list[str] | None = None,
        ttl: TTLConfig | None = None,
    ) -> None:
        self._client = MemoryClient(channel, token=token, timeout_s=timeout_s)
        self._stub = self._client.stub
        self._index_fields = list(index_fields or [])
        self.ttl_config = ttl
        self.loop = running_loop_or_none()

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, target: str, settings: Settings, *, token: TokenSource = None
    ) -> AsyncIterator[AgentmeshStore]:
        """A store on its own channel to ``target`` (``host:port``), closed on exit."""
        channel = open_memory_channel(target, settings)
        try:
            yield cls(channel, token=token, timeout_s=settings.client_deadline_ms / 1000)
        finally:
            await channel.close(None)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """Runs ``ops`` in order (a get after a put in one batch sees the put)."""
        results: list[Result] = []
        for op in ops:
            validate_op_namespace(op)
            results.append(await self._run(op))
        return results

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """``abatch`` on the store's event loop, for LangGraph code in other threads."""
        if self.loop is None:
            raise RuntimeError(
                "AgentmeshStore was created outside an event loop; create it on the loop "
                "that runs the graph"
            )
        pending = list(ops)
        return run_sync(self.loop, self._client, lambda: self.abatch(pending), async_name="abatch")

    async def _run(self, op: Op) -> Result:
        if isinstance(op, GetOp):
            return await self._get(op)
        if isinstance(op, SearchOp):
            return await self._search(op)
        if isinstance(op, PutOp):
            await self._put(op)
            return None
        return await self._list_namespaces(op)

    async def _get(self, op: GetOp) -> Item | None:
        refresh = op.refresh_ttl
        if self.ttl_config is not None and "refresh_on_read" in self.ttl_config:
            refresh = refresh and self.ttl_config["refresh_on_read"]
        request = memory_pb2.GetStoreItemRequest(
            namespace=op.namespace, key=op.key, refresh_ttl=refresh
        )
        try:
            found = await self._client.call(self._stub.GetStoreItem, request)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return _item(found)

    async def _search(self, op: SearchOp) -> list[SearchItem]:
        request = memory_pb2.SearchStoreItemsRequest(
            namespace_prefix=op.namespace_prefix,
            query=op.query or "",
            filter_json=json.dumps(op.filter) if op.filter else "",
            limit=op.limit,
            offset=op.offset,
        )
        items: list[SearchItem] = []
        while True:
            found = await self._client.call(self._stub.SearchStoreItems, request)
            items.extend(_search_item(item) for item in found.items)
            # A response cut at the service's byte budget says where to continue.
            if not found.next_offset or len(items) >= op.limit or not found.items:
                return items
            request.offset = found.next_offset
            request.limit = op.limit - len(items)

    async def _put(self, op: PutOp) -> None:
        if op.value is None:
            await self._client.call(
                self._stub.DeleteStoreItem,
                memory_pb2.DeleteStoreItemRequest(namespace=op.namespace, key=op.key),
            )
            return
        request = memory_pb2.PutStoreItemRequest(
            item=memory_pb2.StoreItem(
                namespace=op.namespace, key=op.key, value_json=json.dumps(dict(op.value))
            ),
            index_fields=self._index_for(op),
        )
        if op.ttl is not None:
            ttl = duration_pb2.Duration()
            ttl.FromTimedelta(timedelta(minutes=op.ttl))
            request.ttl.CopyFrom(ttl)
        await self._client.call(self._stub.PutStoreItem, request)

    def _index_for(self, op: PutOp) -> list[str]:
        if op.index is False:
            return [NO_INDEX]
        if op.index is None:
            return self._index_fields
        return list(op.index)

    async def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        request = memory_pb2.ListStoreNamespacesRequest(
            max_depth=op.max_depth or 0, limit=op.limit, offset=op.offset
        )
        for condition in op.match_conditions or ():
            # The contract holds one prefix and one suffix; LangGraph's API builds
            # at most one of each (``prefix=``/``suffix=`` of list_namespaces).
            target = request.prefix if condition.match_type == "prefix" else request.suffix
            if target:
                raise ValueError(f"at most one {condition.match_type} condition is supported")
            target.extend(condition.path)
        found = await self._client.call(self._stub.ListStoreNamespaces, request)
        return [tuple(namespace.labels) for namespace in found.namespaces]
