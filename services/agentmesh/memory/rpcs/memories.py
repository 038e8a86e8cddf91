"""MemoryService RPCs: long-term memories (create, get, list, update, delete, search).

Memories live in ``memory.memories`` with a pgvector embedding and an HNSW index
(cosine). Three rules shape them:

* Every bad input is INVALID_ARGUMENT naming its field before anything reaches
  PostgreSQL (``memories_validation.py``).
* A write whose vector is within ``merge_similarity`` of a live memory in the same
  tenant and namespace updates that memory instead of adding a copy
  (``domain/merging.py``, ``stores/memories.py``).
* Expired memories do not exist for any read (``stores/memory_search.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

import asyncpg  # type: ignore[import-untyped]
from google.protobuf import empty_pb2

from agentmesh.core.contract import ServicerContext
from agentmesh.core.errors import Aborted, InvalidArgument, NotFound, ResourceExhausted
from agentmesh.core.names import MEMORIES, SESSIONS, new_id
from agentmesh.core.offload import convert_sized
from agentmesh.core.paging import Keyset, fit_page, page_size
from agentmesh.core.sql import ROW_OVERHEAD_BYTES, item_bytes
from agentmesh.core.validation import validate_request_id
from agentmesh.memory.convert import etag, json_to_struct, parse_etag, struct_to_json, timestamp
from agentmesh.memory.domain.merging import NewMemory, plan_merges, similar_earlier
from agentmesh.memory.embedders import embed_checked
from agentmesh.memory.rpc import RpcGroup, expensive, listing
from agentmesh.memory.rpcs.memories_validation import (
    KINDS,
    MAX_METADATA_BYTES,
    list_filter,
    update_values,
    validate_batch,
    validate_content,
    validate_create,
    validate_import,
    validate_namespace,
    validate_vector,
)
from agentmesh.memory.stores.memories import (
    delete_memory,
    get_memory,
    list_memories,
    lock_memory_version,
    update_memory,
    write_memories,
)
from agentmesh.memory.stores.memory_search import SearchQuery, run_search
from agentmesh.memory.stores.memory_tail import import_rows, unindexed_count
from agentmesh.v1 import memory_pb2

DEFAULT_PAGE_SIZE: Final = 50
DEFAULT_TOP_K: Final = 10
MAX_TOP_K: Final = 100
IMPORT_RETRY_AFTER_S: Final = 5.0
"""Retry delay of an import refused because the tenant's memories wait for the index
(the indexer adds some 500-1,000 per second on two cores)."""
PAGE: Final = Keyset(datetime, str)
"""ListMemories pages: newest first, by (create_time, id)."""


def to_proto(row: asyncpg.Record) -> memory_pb2.Memory:
    """A stored row as the wire resource (the embedding is INPUT_ONLY: never sent)."""
    # One constructor call (None leaves a message field unset): a search builds up to
    # a hundred of these per call.
    return memory_pb2.Memory(
        name=MEMORIES.format(row["id"]),
        namespace=row["namespace"],
        kind=row["kind"],
        content=row["content"],
        metadata=json_to_struct(row["metadata"]),
        session=SESSIONS.format(row["session"]) if row["session"] else "",
        merge_count=row["merge_count"],
        etag=etag(row["version"]),
        expire_time=timestamp(row["expire_time"]),
        create_time=timestamp(row["create_time"]),
        update_time=timestamp(row["update_time"]),
    )


def _hit_bytes(hit: tuple[asyncpg.Record, float]) -> int:
    """A search hit's size estimate: its text and metadata, and its names and times."""
    row = hit[0]
    metadata = row["metadata"]
    return len(row["content"].encode()) + len(str(metadata).encode()) + ROW_OVERHEAD_BYTES


class MemoryRpcs(RpcGroup):
    """Long-term memories: create, batch create, get, list, update, delete, search."""

    @property
    def _dimension(self) -> int:
        return self.deps.settings.embedding_dim

    @expensive
    async def CreateMemory(
        self, request: memory_pb2.CreateMemoryRequest, context: ServicerContext
    ) -> memory_pb2.Memory:
        item = validate_create(request, self._dimension)
        tenant = self.tenant()
        await self._admit(tenant, [item])
        await self._embed([item])
        async with self.deps.pool.acquire() as conn, conn.transaction():

            async def write() -> memory_pb2.Memory:
                (row,) = await write_memories(
                    conn, tenant, [item], self.deps.settings.merge_similarity
                )
                return to_proto(row)

            return await self.deps.request_ids.once(
                conn, tenant, "CreateMemory", request, memory_pb2.Memory, write
            )

    @expensive
    async def BatchCreateMemories(
        self, request: memory_pb2.BatchCreateMemoriesRequest, context: ServicerContext
    ) -> memory_pb2.BatchCreateMemoriesResponse:
        items = validate_batch(request.requests, self._dimension)
        tenant = self.tenant()
        await self._admit(tenant, items)
        await self._embed(items)
        async with self.deps.pool.acquire() as conn, conn.transaction():
            replayed = await self._claim_all(conn, tenant, items, request.requests)
            fresh = [j for j in range(len(items)) if j not in replayed]
            rows = await write_memories(
                conn, tenant, [items[j] for j in fresh], self.deps.settings.merge_similarity
            )
            results = dict(replayed)
            for j, row in zip(fresh, rows, strict=True):
                results[j] = to_proto(row)
                await self.deps.request_ids.remember(
                    conn, tenant, "CreateMemory", items[j].request_id, results[j]
                )
        return memory_pb2.BatchCreateMemoriesResponse(
            memories=[results[j] for j in range(len(items))]
        )

    @expensive
    async def ImportMemories(
        self, request: memory_pb2.ImportMemoriesRequest, context: ServicerContext
    ) -> memory_pb2.ImportMemoriesResponse:
        items = validate_import(request.memories, self._dimension)
        validate_request_id(request.request_id)
        tenant = self.tenant()
        cap = self.deps.settings.import_max_unindexed
        if await unindexed_count(self.deps.pool, tenant, cap) >= cap:
            raise ResourceExhausted(
                f"{cap} imported memories of this tenant wait for the vector index;"
                " send this slice again later",
                retry_after_s=IMPORT_RETRY_AFTER_S,
                reason="IMPORT_BACKLOG",
            )
        await self._admit(tenant, items)
        await self._embed(items)
        vectors = [item.embedding or [] for item in items]
        namespaces = [item.namespace for item in items]
        threshold = self.deps.settings.merge_similarity
        earlier = await convert_sized(
            lambda: similar_earlier(vectors, namespaces, threshold),
            len(items) * self._dimension * 4,
        )
        targets, target_of = plan_merges(len(items), {}, earlier)
        ids = [new_id() for _ in targets]
        response = memory_pb2.ImportMemoriesResponse(
            names=[MEMORIES.format(ids[t]) for t in target_of],
            imported_count=len(targets),
            merged_count=len(items) - len(targets),
        )

        async def write() -> memory_pb2.ImportMemoriesResponse:
            groups = {ids[t]: [items[j] for j in target.items] for t, target in enumerate(targets)}
            await import_rows(conn, tenant, groups)
            return response

        async with self.deps.pool.acquire() as conn, conn.transaction():
            # request_id is the whole call's: ``once`` replays the first answer.
            done = await self.deps.request_ids.once(
                conn, tenant, "ImportMemories", request, memory_pb2.ImportMemoriesResponse, write
            )
        self.deps.indexer.wake()
        return done

    async def _admit(self, tenant: str, items: Sequence[NewMemory]) -> None:
        """The storage quota of memories, before any embedding is spent on them (a
        merge into a near-duplicate is counted as a new row until the next measure)."""
        await self.deps.quotas.admit(
            tenant,
            "memories",
            rows=len(items),
            size=sum(len(i.content.encode()) + 4 * self._dimension for i in items),
        )

    async def _embed(self, items: Sequence[NewMemory]) -> None:
        """Embeds the items that carry no vector in ONE embedder call, before (outside)
        the write's transaction: a remote provider may take seconds."""
        missing = [item for item in items if item.embedding is None]
        vectors = await embed_checked(
            self.deps.embedder, [item.content for item in missing], self._dimension
        )
        for item, vector in zip(missing, vectors, strict=True):
            item.embedding = vector

    async def _claim_all(
        self,
        conn: asyncpg.Connection,
        tenant: str,
        items: Sequence[NewMemory],
        requests: Sequence[memory_pb2.CreateMemoryRequest],
    ) -> dict[int, memory_pb2.Memory]:
        """Claims every item's request_id (sorted: two overlapping batches must not
        deadlock); returns the stored responses of items that were done before. A key
        reused for a different CreateMemoryRequest (single or batch item alike) is
        INVALID_ARGUMENT on that item's request_id."""
        replayed: dict[int, memory_pb2.Memory] = {}
        keyed = sorted((item.request_id, j) for j, item in enumerate(items) if item.request_id)
        for request_id, j in keyed:
            replay = await self.deps.request_ids.claim(
                conn,
                tenant,
                "CreateMemory",
                request_id,
                memory_pb2.Memory,
                request=requests[j],
                field=f"requests[{j}].request_id",
            )
            if replay is not None:
                replayed[j] = replay
        return replayed

    async def GetMemory(
        self, request: memory_pb2.GetMemoryRequest, context: ServicerContext
    ) -> memory_pb2.Memory:
        row = await get_memory(self.deps.pool, self.tenant(), MEMORIES.parse(request.name))
        if row is None:
            raise NotFound(MEMORIES.resource_type, request.name)
        return to_proto(row)

    @listing
    async def ListMemories(
        self, request: memory_pb2.ListMemoriesRequest, context: ServicerContext
    ) -> memory_pb2.ListMemoriesResponse:
        size = page_size(request.page_size, default=DEFAULT_PAGE_SIZE)
        conditions = list_filter(request.filter)
        query = {"filter": request.filter}
        after = PAGE.decode(request.page_token, query)
        budget = self.deps.process.page_max_bytes
        rows = await list_memories(
            self.deps.pool, self.tenant(), conditions, after, size + 1, budget=budget
        )
        page, token = PAGE.page(
            rows,
            size,
            query,
            key=lambda row: (row["create_time"], row["id"]),
            budget=budget,
            item_bytes=item_bytes,
        )
        memories = await convert_sized(
            lambda: [to_proto(row) for row in page], sum(map(item_bytes, page))
        )
        return memory_pb2.ListMemoriesResponse(memories=memories, next_page_token=token)

    @expensive
    async def UpdateMemory(
        self, request: memory_pb2.UpdateMemoryRequest, context: ServicerContext
    ) -> memory_pb2.Memory:
        memory = request.memory
        memory_id = MEMORIES.parse(memory.name, field="memory.name")
        changes = update_values(request, self._dimension)
        expected = parse_etag(memory.etag, field="memory.etag") if memory.etag else None
        if "content" in changes and changes.get("embedding") is None:
            (changes["embedding"],) = await embed_checked(
                self.deps.embedder, [changes["content"]], self._dimension
            )
        tenant = self.tenant()
        async with self.deps.pool.acquire() as conn, conn.transaction():
            version = await lock_memory_version(conn, tenant, memory_id)
            if version is None:
                raise NotFound(MEMORIES.resource_type, memory.name)
            if expected is not None and expected != version:
                raise Aborted("ETAG_MISMATCH", f"{memory.name} changed since it was read")
            row = await update_memory(conn, tenant, memory_id, changes)
        return to_proto(row)

    async def DeleteMemory(
        self, request: memory_pb2.DeleteMemoryRequest, context: ServicerContext
    ) -> empty_pb2.Empty:
        memory_id = MEMORIES.parse(request.name)
        deleted = await delete_memory(self.deps.pool, self.tenant(), memory_id)
        if not deleted and not request.allow_missing:
            raise NotFound(MEMORIES.resource_type, request.name)
        return empty_pb2.Empty()

    @expensive
    @listing
    async def SearchMemories(
        self, request: memory_pb2.SearchMemoriesRequest, context: ServicerContext
    ) -> memory_pb2.SearchMemoriesResponse:
        query = await self._search_query(request)
        async with self.deps.pool.acquire() as conn:
            hits = await run_search(conn, self.tenant(), query, self.deps.settings.hnsw_ef_search)
        # top_k bounds the rows (at most 100 memories of bounded size); the response
        # also stops at the byte budget, best hits first.
        fitting = fit_page(
            hits, limit=len(hits), budget=self.deps.process.page_max_bytes, size=_hit_bytes
        )
        results = await convert_sized(
            lambda: [
                memory_pb2.ScoredMemory(memory=to_proto(row), score=score) for row, score in fitting
            ],
            sum(map(_hit_bytes, fitting)),
        )
        return memory_pb2.SearchMemoriesResponse(
            results=results, truncated=len(fitting) < len(hits)
        )

    async def _search_query(self, request: memory_pb2.SearchMemoriesRequest) -> SearchQuery:
        """Validates everything first, and embeds the text last (a provider call is
        the expensive part; a bad top_k should not cost one)."""
        which = request.WhichOneof("query")
        if which is None:
            raise InvalidArgument("query", "required: text or vector")
        if which == "vector":
            validate_vector(request.vector.values, self._dimension, "vector.values")
        else:
            validate_content(request.text, "text")
        if request.namespace_prefix:
            validate_namespace(request.namespace_prefix, "namespace_prefix")
        kinds = []
        for i, kind in enumerate(request.kinds):
            if kind not in KINDS:
                raise InvalidArgument(f"kinds[{i}]", f"unknown or unspecified kind {kind}")
            kinds.append(kind)
        top_k = request.top_k or DEFAULT_TOP_K
        if not 1 <= top_k <= MAX_TOP_K:
            raise InvalidArgument("top_k", f"must be 1-{MAX_TOP_K} (0 means {DEFAULT_TOP_K})")
        if not -1.0 <= request.min_score <= 1.0:  # also refuses NaN
            raise InvalidArgument("min_score", "must be in [-1, 1]")
        metadata = (
            struct_to_json(
                request.metadata_filter, field="metadata_filter", max_bytes=MAX_METADATA_BYTES
            )
            if request.HasField("metadata_filter") and request.metadata_filter.fields
            else None
        )
        if which == "vector":
            vector = list(request.vector.values)
        else:
            (vector,) = await embed_checked(self.deps.embedder, [request.text], self._dimension)
        return SearchQuery(
            vector=vector,
            namespace_prefix=request.namespace_prefix,
            kinds=tuple(kinds),
            metadata_filter=metadata,
            top_k=top_k,
            min_score=request.min_score,
        )
