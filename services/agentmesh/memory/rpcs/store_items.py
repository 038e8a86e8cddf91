"""MemoryService RPCs: the LangGraph store: put, get, delete, search, list namespaces.

Items are JSON documents under a namespace path, scoped by tenant. An item's indexed
text (the fields named by ``index_fields``, the whole document by default) is
embedded by the service's embedder on put, so ``SearchStoreItems`` can rank by
meaning. Items with a TTL vanish from every read once expired, and later writes of
the tenant sweep them (``stores.store_items``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]
from google.protobuf import empty_pb2

from agentmesh.core.contract import ServicerContext
from agentmesh.core.errors import FailedPrecondition, InvalidArgument, NotFound
from agentmesh.core.offload import convert_sized
from agentmesh.core.paging import fit_page
from agentmesh.core.sql import item_bytes
from agentmesh.core.validation import Violations, check_duration
from agentmesh.memory.convert import json_object, timestamp
from agentmesh.memory.domain.store_items import (
    check_index_fields,
    check_key,
    check_namespace,
    filter_terms,
    index_text,
)
from agentmesh.memory.rpc import RpcGroup, expensive, listing
from agentmesh.memory.stores.store_items import (
    EMBEDDING_DIM,
    delete_item,
    get_item,
    list_namespaces,
    put_item,
    search_items,
)
from agentmesh.v1 import memory_pb2

MAX_FILTER_BYTES: Final = 64 * 1024
MAX_TTL_S: Final = 10 * 365 * 86_400
"""Longest store item TTL: ten years (unset means no expiry)."""
"""Largest item value (and search filter), as JSON text."""
MAX_QUERY_CHARS: Final = 8192
MAX_LIMIT: Final = 1000
DEFAULT_SEARCH_LIMIT: Final = 10
DEFAULT_NAMESPACE_LIMIT: Final = 100


def _item(row: asyncpg.Record, score: float | None = None) -> memory_pb2.StoreItem:
    item = memory_pb2.StoreItem(
        namespace=row["namespace"],
        key=row["key"],
        value_json=row["value"],
        create_time=timestamp(row["create_time"]),
        update_time=timestamp(row["update_time"]),
    )
    if score is not None:
        item.score = score
    return item


def _json_object(text: str, field: str, *, required: bool, max_bytes: int) -> dict[str, Any] | None:
    """Parses a JSON object the way ``jsonb`` will accept it, or raises INVALID_ARGUMENT."""
    if not text:
        if required:
            raise InvalidArgument(field, "required")
        return None
    return json_object(text, field=field, max_bytes=max_bytes)


def _limit(value: int, field: str, default: int) -> int:
    if value < 0 or value > MAX_LIMIT:
        raise InvalidArgument(field, f"must be 0 (default {default}) to {MAX_LIMIT}")
    return value or default


def _offset(value: int) -> int:
    if value < 0:
        raise InvalidArgument("offset", "must not be negative")
    return value


def _ttl(request: memory_pb2.PutStoreItemRequest) -> timedelta | None:
    if not request.HasField("ttl"):
        return None
    seconds = check_duration(
        request.ttl.seconds, request.ttl.nanos, field="ttl", min_s=0.001, max_s=MAX_TTL_S
    )
    return timedelta(seconds=seconds)


def _check_item_name(namespace: Sequence[str], key: str, *, field: str = "") -> None:
    """An item's namespace and key, both reported when both are bad."""
    check = Violations()
    check_namespace(namespace, check, field=f"{field}namespace", required=True)
    check_key(key, check, field=f"{field}key")
    check.raise_if_any()


class StoreRpcs(RpcGroup):
    """The LangGraph store: put, get, delete, search, list namespaces."""

    @expensive
    async def PutStoreItem(
        self, request: memory_pb2.PutStoreItemRequest, context: ServicerContext
    ) -> memory_pb2.StoreItem:
        item = request.item
        _check_item_name(item.namespace, item.key, field="item.")
        value = await convert_sized(
            lambda: _json_object(
                item.value_json,
                "item.value_json",
                required=True,
                max_bytes=self.deps.settings.store_value_max_bytes,
            ),
            len(item.value_json),
        )
        assert value is not None  # required
        await self.deps.quotas.admit(
            self.tenant(), "store_items", rows=1, size=len(item.value_json.encode())
        )
        check_index_fields(request.index_fields)
        ttl = _ttl(request)
        embedding = await self._embed(index_text(value, request.index_fields))

        async with self.deps.pool.acquire() as conn, conn.transaction():
            row = await put_item(
                conn, self.tenant(), item.namespace, item.key, item.value_json, embedding, ttl
            )
        return _item(row)

    async def GetStoreItem(
        self, request: memory_pb2.GetStoreItemRequest, context: ServicerContext
    ) -> memory_pb2.StoreItem:
        _check_item_name(request.namespace, request.key)
        row = await get_item(
            self.deps.pool,
            self.tenant(),
            request.namespace,
            request.key,
            refresh_ttl=request.refresh_ttl,
        )
        if row is None:
            raise NotFound("store item", "/".join([*request.namespace, request.key]))
        return _item(row)

    async def DeleteStoreItem(
        self, request: memory_pb2.DeleteStoreItemRequest, context: ServicerContext
    ) -> empty_pb2.Empty:
        _check_item_name(request.namespace, request.key)
        await delete_item(self.deps.pool, self.tenant(), request.namespace, request.key)
        return empty_pb2.Empty()

    @expensive
    @listing
    async def SearchStoreItems(
        self, request: memory_pb2.SearchStoreItemsRequest, context: ServicerContext
    ) -> memory_pb2.SearchStoreItemsResponse:
        check = Violations()
        check_namespace(request.namespace_prefix, check, field="namespace_prefix", required=False)
        if len(request.query) > MAX_QUERY_CHARS:
            check.add("query", f"at most {MAX_QUERY_CHARS} characters")
        check.raise_if_any()
        filter_ = (
            _json_object(
                request.filter_json, "filter_json", required=False, max_bytes=MAX_FILTER_BYTES
            )
            or {}
        )
        limit = _limit(request.limit, "limit", DEFAULT_SEARCH_LIMIT)
        offset = _offset(request.offset)
        terms = filter_terms(filter_)

        query_vector = None
        if request.query:
            query_vector = await self._embed(request.query)
            if query_vector is None:  # a query with no words to embed matches nothing
                return memory_pb2.SearchStoreItemsResponse()
        rows = await search_items(
            self.deps.pool,
            self.tenant(),
            namespace_prefix=request.namespace_prefix,
            terms=terms,
            query_vector=query_vector,
            limit=limit,
            offset=offset,
            budget=self.deps.process.page_max_bytes,
        )
        page = fit_page(rows, limit=limit, budget=self.deps.process.page_max_bytes, size=item_bytes)
        items = await convert_sized(
            lambda: [_item(row, row["score"]) for row in page], sum(map(item_bytes, page))
        )
        # Rows past the page: the budget stopped it before `limit` items.
        next_offset = offset + len(page) if len(rows) > len(page) else 0
        return memory_pb2.SearchStoreItemsResponse(items=items, next_offset=next_offset)

    @listing
    async def ListStoreNamespaces(
        self, request: memory_pb2.ListStoreNamespacesRequest, context: ServicerContext
    ) -> memory_pb2.ListStoreNamespacesResponse:
        check = Violations()
        check_namespace(request.prefix, check, field="prefix", required=False, wildcard=True)
        check_namespace(request.suffix, check, field="suffix", required=False, wildcard=True)
        if request.max_depth < 0:
            check.add("max_depth", "must not be negative (0 means no limit)")
        check.raise_if_any()
        limit = _limit(request.limit, "limit", DEFAULT_NAMESPACE_LIMIT)
        offset = _offset(request.offset)

        paths = await list_namespaces(
            self.deps.pool,
            self.tenant(),
            prefix=request.prefix,
            suffix=request.suffix,
            max_depth=request.max_depth,
            limit=limit,
            offset=offset,
        )
        return memory_pb2.ListStoreNamespacesResponse(
            namespaces=[memory_pb2.StoreNamespace(labels=path) for path in paths]
        )

    async def _embed(self, text: str | None) -> list[float] | None:
        """The embedding of ``text`` (None for None), checked against the column width."""
        if text is None or not text.strip():
            return None
        (vector,) = await self.deps.embedder.embed([text])
        if len(vector) != EMBEDDING_DIM:
            raise FailedPrecondition(
                "STORE_EMBEDDING_DIMENSION",
                f"the configured embedder makes {len(vector)}-dimensional vectors; the "
                f"store indexes {EMBEDDING_DIM} dimensions",
            )
        return vector
