"""MemoryService RPCs: The LangGraph store: put, get, delete, search, list namespaces.

Items are JSON documents under a namespace path, scoped by tenant. An item's indexed
text (the fields named by ``index_fields``, the whole document by default) is
embedded by the service's embedder on put, so ``SearchStoreItems`` can rank by
meaning. Items with a TTL vanish from every read once expired, and later writes of
the tenant sweep them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]
from google.protobuf import empty_pb2
from langgraph.store.base.embed import get_text_at_path, tokenize_path

from agentmesh.core.contract import ServicerContext
from agentmesh.core.errors import FailedPrecondition, InvalidArgument, NotFound
from agentmesh.memory.convert import timestamp
from agentmesh.memory.rpc import RpcGroup
from agentmesh.v1 import memory_pb2

EMBEDDING_DIM: Final = 384
"""Width of ``memory.store_items.embedding`` (the migration's ``vector(384)``)."""
MAX_LABELS: Final = 32
MAX_LABEL_CHARS: Final = 256
MAX_KEY_CHARS: Final = 1024
MAX_VALUE_BYTES: Final = 1024 * 1024
MAX_INDEX_FIELDS: Final = 32
MAX_QUERY_CHARS: Final = 8192
MAX_LIMIT: Final = 1000
DEFAULT_SEARCH_LIMIT: Final = 10
DEFAULT_NAMESPACE_LIMIT: Final = 100
NO_INDEX: Final = "$none"
WILDCARD: Final = "*"
_COMPARISONS: Final = {
    "$eq": "=",
    "$ne": "IS DISTINCT FROM",
    "$gt": ">",
    "$gte": ">=",
    "$lt": "<",
    "$lte": "<=",
}

_LIVE: Final = "(expire_time IS NULL OR expire_time > now())"
_ITEM_COLUMNS: Final = "namespace, key, value::text AS value, create_time, update_time"


class _Sql:
    """WHERE conditions and their positional arguments, built together."""

    def __init__(self, *args: Any) -> None:
        self.args: list[Any] = list(args)
        self.conditions: list[str] = []

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def where(self, condition: str) -> None:
        self.conditions.append(condition)

    def clause(self) -> str:
        return " AND ".join(self.conditions)


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


def _labels(
    labels: Sequence[str], field: str, *, required: bool, wildcard: bool = False
) -> list[tuple[str, str]]:
    """Violations of a namespace path: bounded, no empty labels, no NUL, and ``*``
    only where it is a wildcard (it would otherwise be ambiguous with one)."""
    if required and not labels:
        return [(field, "at least one label is required")]
    if len(labels) > MAX_LABELS:
        return [(field, f"at most {MAX_LABELS} labels")]
    for i, label in enumerate(labels):
        if not label:
            return [(f"{field}[{i}]", "labels must not be empty")]
        if len(label) > MAX_LABEL_CHARS or "\x00" in label:
            return [(f"{field}[{i}]", f"at most {MAX_LABEL_CHARS} characters, no NUL")]
        if label == WILDCARD and not wildcard:
            return [(f"{field}[{i}]", "`*` is not a valid label here")]
    return []


def _key(key: str, field: str = "key") -> list[tuple[str, str]]:
    if not key:
        return [(field, "required")]
    if len(key) > MAX_KEY_CHARS or "\x00" in key:
        return [(field, f"at most {MAX_KEY_CHARS} characters, no NUL")]
    return []


def _json_object(text: str, field: str, *, required: bool) -> dict[str, Any] | None:
    """Parses a JSON object the way ``jsonb`` will accept it, or raises INVALID_ARGUMENT."""
    if not text:
        if required:
            raise InvalidArgument(field, "required")
        return None
    if len(text.encode()) > MAX_VALUE_BYTES:
        raise InvalidArgument(field, f"larger than {MAX_VALUE_BYTES} bytes")

    def reject_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(text, parse_constant=reject_constant)
    except ValueError as exc:
        raise InvalidArgument(field, f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(field, "must be a JSON object")
    if "\\u0000" in text:
        raise InvalidArgument(field, "must not contain NUL characters (\\u0000)")
    return value


def _limit(value: int, field: str, default: int) -> int:
    if value < 0 or value > MAX_LIMIT:
        raise InvalidArgument(field, f"must be 0 (default {default}) to {MAX_LIMIT}")
    return value or default


def _offset(value: int) -> int:
    if value < 0:
        raise InvalidArgument("offset", "must not be negative")
    return value


def _index_text(value: dict[str, Any], index_fields: Sequence[str]) -> str | None:
    """The text to embed for ``value``, or None when the item is not to be indexed."""
    if list(index_fields) == [NO_INDEX]:
        return None
    texts = [text for path in index_fields or ["$"] for text in get_text_at_path(value, path)]
    joined = "\n".join(texts)
    return joined if joined.strip() else None


def _check_index_fields(index_fields: Sequence[str]) -> None:
    if len(index_fields) > MAX_INDEX_FIELDS:
        raise InvalidArgument("index_fields", f"at most {MAX_INDEX_FIELDS} paths")
    for i, path in enumerate(index_fields):
        if not path or len(path) > MAX_LABEL_CHARS:
            raise InvalidArgument(f"index_fields[{i}]", "a JSON path of 1-256 characters")
        if path == NO_INDEX and len(index_fields) > 1:
            raise InvalidArgument("index_fields", "`$none` must be the only entry")
        if any(token.startswith("[") and not token.endswith("]") for token in tokenize_path(path)):
            raise InvalidArgument(f"index_fields[{i}]", f"{path!r} is not a JSON path")


def _ttl(request: memory_pb2.PutStoreItemRequest) -> timedelta | None:
    if not request.HasField("ttl"):
        return None
    ttl = request.ttl.ToTimedelta()
    if ttl <= timedelta(0):
        raise InvalidArgument("ttl", "must be positive (leave unset for no expiry)")
    return ttl


def _filter(sql: _Sql, filter_: dict[str, Any]) -> None:
    """``filter_json`` as SQL: a plain value must be contained in the item's field
    (jsonb ``@>``); ``{"$gt": 3}``-style operators compare the field with the value
    (comparisons only between values of the same JSON type), as LangGraph's stores do."""
    for field, expected in filter_.items():
        if isinstance(expected, dict) and expected and all(k.startswith("$") for k in expected):
            for operator, operand in expected.items():
                _comparison(sql, field, operator, operand)
        else:
            sql.where(f"value @> {sql.arg(json.dumps({field: expected}))}::jsonb")


def _comparison(sql: _Sql, field: str, operator: str, operand: Any) -> None:
    if operator not in _COMPARISONS:
        raise InvalidArgument(
            "filter_json", f"unknown operator {operator!r} (use {', '.join(_COMPARISONS)})"
        )
    column = f"(value -> {sql.arg(field)})"
    value = f"{sql.arg(json.dumps(operand))}::jsonb"
    if operator == "$ne":
        sql.where(f"{column} IS DISTINCT FROM {value}")
    elif operator == "$eq":
        sql.where(f"{column} = {value}")
    else:
        sql.where(f"jsonb_typeof({column}) = jsonb_typeof({value})")
        sql.where(f"{column} {_COMPARISONS[operator]} {value}")


def _namespace_match(sql: _Sql, labels: Sequence[str], *, suffix: bool) -> None:
    """Namespaces starting (or ending) with ``labels``, ``*`` matching any one label."""
    if not labels:
        return
    sql.where(f"cardinality(namespace) >= {len(labels)}")
    for i, label in enumerate(labels):
        if label == WILDCARD:
            continue
        position = f"cardinality(namespace) - {len(labels) - 1 - i}" if suffix else str(i + 1)
        sql.where(f"namespace[{position}] = {sql.arg(label)}")


class StoreRpcs(RpcGroup):
    """The LangGraph store: put, get, delete, search, list namespaces.

    RPCs not defined here answer UNIMPLEMENTED (see servicer.py).
    """

    async def PutStoreItem(
        self, request: memory_pb2.PutStoreItemRequest, context: ServicerContext
    ) -> memory_pb2.StoreItem:
        item = request.item
        violations = _labels(item.namespace, "item.namespace", required=True) + _key(
            item.key, "item.key"
        )
        if violations:
            raise InvalidArgument(violations)
        value = _json_object(item.value_json, "item.value_json", required=True)
        assert value is not None  # required
        _check_index_fields(request.index_fields)
        ttl = _ttl(request)
        embedding = await self._embed(_index_text(value, request.index_fields))

        tenant = self.tenant()
        async with self.deps.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM memory.store_items WHERE tenant = $1 AND expire_time <= now()", tenant
            )
            row = await conn.fetchrow(
                f"""
                INSERT INTO memory.store_items AS s
                    (tenant, namespace, key, value, embedding, ttl, expire_time)
                VALUES ($1, $2, $3, $4::jsonb, $5, $6, now() + $6)
                ON CONFLICT (tenant, namespace, key) DO UPDATE
                SET value = EXCLUDED.value, embedding = EXCLUDED.embedding,
                    ttl = EXCLUDED.ttl, expire_time = EXCLUDED.expire_time,
                    update_time = now()
                RETURNING {_ITEM_COLUMNS}
                """,
                tenant,
                list(item.namespace),
                item.key,
                item.value_json,
                embedding,
                ttl,
            )
        return _item(row)

    async def GetStoreItem(
        self, request: memory_pb2.GetStoreItemRequest, context: ServicerContext
    ) -> memory_pb2.StoreItem:
        violations = _labels(request.namespace, "namespace", required=True) + _key(request.key)
        if violations:
            raise InvalidArgument(violations)
        row = await self.deps.pool.fetchrow(
            f"""
            WITH refreshed AS (
                UPDATE memory.store_items SET expire_time = now() + ttl
                WHERE $4 AND tenant = $1 AND namespace = $2 AND key = $3
                  AND ttl IS NOT NULL AND expire_time > now()
            )
            SELECT {_ITEM_COLUMNS} FROM memory.store_items
            WHERE tenant = $1 AND namespace = $2 AND key = $3 AND {_LIVE}
            """,
            self.tenant(),
            list(request.namespace),
            request.key,
            request.refresh_ttl,
        )
        if row is None:
            raise NotFound("store item", "/".join([*request.namespace, request.key]))
        return _item(row)

    async def DeleteStoreItem(
        self, request: memory_pb2.DeleteStoreItemRequest, context: ServicerContext
    ) -> empty_pb2.Empty:
        violations = _labels(request.namespace, "namespace", required=True) + _key(request.key)
        if violations:
            raise InvalidArgument(violations)
        await self.deps.pool.execute(
            "DELETE FROM memory.store_items WHERE tenant = $1 AND namespace = $2 AND key = $3",
            self.tenant(),
            list(request.namespace),
            request.key,
        )
        return empty_pb2.Empty()

    async def SearchStoreItems(
        self, request: memory_pb2.SearchStoreItemsRequest, context: ServicerContext
    ) -> memory_pb2.SearchStoreItemsResponse:
        violations = _labels(request.namespace_prefix, "namespace_prefix", required=False)
        if len(request.query) > MAX_QUERY_CHARS:
            violations.append(("query", f"at most {MAX_QUERY_CHARS} characters"))
        if violations:
            raise InvalidArgument(violations)
        filter_ = _json_object(request.filter_json, "filter_json", required=False) or {}
        limit = _limit(request.limit, "limit", DEFAULT_SEARCH_LIMIT)
        offset = _offset(request.offset)

        sql = _Sql(self.tenant())
        sql.where("tenant = $1")
        sql.where(_LIVE)
        if request.namespace_prefix:
            prefix = sql.arg(list(request.namespace_prefix))
            sql.where(f"namespace[1:{len(request.namespace_prefix)}] = {prefix}::text[]")
        _filter(sql, filter_)
        if request.query:
            query_vector = await self._embed(request.query)
            if query_vector is None:  # a query with no words to embed matches nothing
                return memory_pb2.SearchStoreItemsResponse()
            sql.where("embedding IS NOT NULL")
            distance = f"embedding <=> {sql.arg(query_vector)}"
            select = f"SELECT {_ITEM_COLUMNS}, 1 - ({distance}) AS score"
            order = "score DESC, namespace, key"
        else:
            select = f"SELECT {_ITEM_COLUMNS}, NULL::float8 AS score"
            order = "update_time DESC, namespace, key"
        rows = await self.deps.pool.fetch(
            f"{select} FROM memory.store_items WHERE {sql.clause()}"
            f" ORDER BY {order} LIMIT {limit} OFFSET {offset}",
            *sql.args,
        )
        return memory_pb2.SearchStoreItemsResponse(items=[_item(row, row["score"]) for row in rows])

    async def ListStoreNamespaces(
        self, request: memory_pb2.ListStoreNamespacesRequest, context: ServicerContext
    ) -> memory_pb2.ListStoreNamespacesResponse:
        violations = _labels(request.prefix, "prefix", required=False, wildcard=True) + _labels(
            request.suffix, "suffix", required=False, wildcard=True
        )
        if request.max_depth < 0:
            violations.append(("max_depth", "must not be negative (0 means no limit)"))
        if violations:
            raise InvalidArgument(violations)
        limit = _limit(request.limit, "limit", DEFAULT_NAMESPACE_LIMIT)
        offset = _offset(request.offset)

        sql = _Sql(self.tenant())
        sql.where("tenant = $1")
        sql.where(_LIVE)
        _namespace_match(sql, request.prefix, suffix=False)
        _namespace_match(sql, request.suffix, suffix=True)
        path = f"namespace[1:{request.max_depth}]" if request.max_depth else "namespace"
        rows = await self.deps.pool.fetch(
            f"SELECT DISTINCT {path} AS path FROM memory.store_items WHERE {sql.clause()}"
            f" ORDER BY path LIMIT {limit} OFFSET {offset}",
            *sql.args,
        )
        return memory_pb2.ListStoreNamespacesResponse(
            namespaces=[memory_pb2.StoreNamespace(labels=row["path"]) for row in rows]
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
