"""MemoryService RPCs: long-term memories (create, get, list, update, delete, search).

Memories live in ``memory.memories`` with a pgvector embedding and an HNSW index
(cosine). Three rules shape the code:

* Every bad input is INVALID_ARGUMENT naming its field before anything reaches
  PostgreSQL: a wrong vector size must never surface as a database error.
* A write whose vector is within ``memory_merge_similarity`` of a live memory in
  the same tenant and namespace updates that memory instead of adding a copy. A
  transaction-level advisory lock per (tenant, namespace) serialises the
  look-then-write, so two concurrent near-duplicates cannot both insert.
* Expired memories do not exist for any read: every query filters them out.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]
from google.protobuf import empty_pb2
from pgvector import Vector

from agentmesh.core.contract import ServicerContext
from agentmesh.core.errors import Aborted, InvalidArgument, NotFound
from agentmesh.core.filtering import EQUALITY, FieldRule, Term, parse_filter
from agentmesh.core.names import MEMORIES, SESSIONS, new_id
from agentmesh.core.paging import decode_page_token, encode_page_token, page_size
from agentmesh.core.settings import ConfigError
from agentmesh.memory.convert import (
    etag,
    from_timestamp,
    json_to_struct,
    parse_etag,
    struct_to_json,
    timestamp,
)
from agentmesh.memory.domain.merging import MergeTarget, NewMemory, merged_fields, plan_merges
from agentmesh.memory.embedders import embed_checked
from agentmesh.memory.idempotency import claim, remember, validate_request_id
from agentmesh.memory.rpc import RpcGroup
from agentmesh.memory.settings import MemorySettings
from agentmesh.v1 import memory_pb2

# ------------------------------------------------------------------ limits

VECTOR_COLUMN_DIM: Final = 384
"""Size of ``memory.memories.embedding`` (fixed by the migration)."""
MAX_CONTENT_CHARS: Final = 16_384
MAX_METADATA_BYTES: Final = 16 * 1024
MAX_BATCH: Final = 500
MAX_NAMESPACE_CHARS: Final = 1024
DEFAULT_PAGE_SIZE: Final = 50
DEFAULT_TOP_K: Final = 10
MAX_TOP_K: Final = 100
MIN_PGVECTOR: Final = (0, 8, 0)
"""``hnsw.iterative_scan`` (filtered search without losing recall) came in 0.8."""

HNSW_INDEX: Final = "memories_embedding_hnsw"
MERGE_EF_SEARCH: Final = 20
"""``hnsw.ef_search`` of the near-duplicate lookup (see write_memories)."""
INDEXED: Final = f"embedding::halfvec({VECTOR_COLUMN_DIM})"
"""What the HNSW index holds: each embedding in half precision. Half the index size
and memory traffic of ``vector`` (112 MB against 195 MB at 100k x 384), the same
recall@10 within 0.005 (docs/benchmarks.md); rows keep full precision, and scores are
computed from them. A statement reaches the index only by ordering by exactly
``{INDEXED} <=> <query>::halfvec(dim)``: see ``nearest``."""


def nearest(query: str) -> str:
    """The ORDER BY expression that walks the HNSW index towards ``query`` (an SQL
    expression of type vector)."""
    return f"{INDEXED} <=> ({query})::halfvec({VECTOR_COLUMN_DIM})"


_SEGMENT = r"[A-Za-z0-9_.-]+"
_NAMESPACE: Final = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT}){{0,7}}")
_KINDS: Final = frozenset(
    {
        memory_pb2.MEMORY_KIND_SEMANTIC,
        memory_pb2.MEMORY_KIND_EPISODIC,
        memory_pb2.MEMORY_KIND_PROCEDURAL,
    }
)
_UPDATABLE: Final = frozenset({"content", "kind", "metadata", "expire_time", "namespace"})

_COLUMNS: Final = (
    "id, namespace, kind, content, metadata, session, expire_time,"
    " merge_count, version, create_time, update_time"
)
_LIVE: Final = "(expire_time IS NULL OR expire_time > now())"
"""Expired memories no longer exist: every read and merge lookup adds this."""

# ------------------------------------------------------------ validation


def validate_namespace(value: str, field_name: str) -> str:
    """1-8 slash-separated segments of ``[A-Za-z0-9_.-]``."""
    if not value:
        raise InvalidArgument(field_name, "required: a path like users/u1/preferences")
    if len(value) > MAX_NAMESPACE_CHARS or not _NAMESPACE.fullmatch(value):
        raise InvalidArgument(
            field_name,
            f"{value[:80]!r} must be 1-8 '/'-separated segments of A-Z a-z 0-9 _ . - "
            f"(at most {MAX_NAMESPACE_CHARS} characters)",
        )
    return value


def validate_vector(values: Sequence[float], dimension: int, field_name: str) -> list[float]:
    """A client vector: exactly ``dimension`` finite floats, not all zero (cosine of a
    zero vector is undefined)."""
    if len(values) != dimension:
        raise InvalidArgument(
            field_name, f"has {len(values)} values; this server's dimension is {dimension}"
        )
    vector = list(values)
    if not all(math.isfinite(x) for x in vector):
        raise InvalidArgument(field_name, "values must be finite (no NaN or infinity)")
    if not any(vector):
        raise InvalidArgument(field_name, "must not be all zeros: cosine similarity is undefined")
    return vector


def _validate_content(content: str, field_name: str) -> str:
    if not content:
        raise InvalidArgument(field_name, "required: 1-16384 characters")
    if len(content) > MAX_CONTENT_CHARS:
        raise InvalidArgument(field_name, f"{len(content)} characters; at most {MAX_CONTENT_CHARS}")
    return content


def _validate_kind(kind: int, field_name: str) -> int:
    if kind == memory_pb2.MEMORY_KIND_UNSPECIFIED:
        return memory_pb2.MEMORY_KIND_SEMANTIC
    if kind not in _KINDS:
        raise InvalidArgument(field_name, f"unknown kind {kind}")
    return kind


def _validate_expire_time(memory: memory_pb2.Memory, field_name: str) -> datetime | None:
    if not memory.HasField("expire_time"):
        return None
    try:
        when = from_timestamp(memory.expire_time)
    except (ValueError, OverflowError):
        raise InvalidArgument(field_name, "not a valid timestamp") from None
    if when <= datetime.now(UTC):
        raise InvalidArgument(field_name, "must be in the future")
    return when


def _validate_session(name: str, field_name: str) -> str | None:
    return SESSIONS.parse(name, field=field_name) if name else None


def validate_create(
    request: memory_pb2.CreateMemoryRequest, dimension: int, prefix: str = ""
) -> NewMemory:
    """Checks one create request; violations name fields under ``prefix``
    (``requests[3].`` in a batch). All violations of the item are reported at once."""
    problems: list[tuple[str, str]] = []

    def check(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except InvalidArgument as exc:
            problems.extend(exc.violations)
            return None

    if not request.HasField("memory"):
        raise InvalidArgument(f"{prefix}memory", "required")
    memory = request.memory

    def field_of(name: str) -> str:
        return f"{prefix}memory.{name}"

    new = NewMemory(
        namespace=check(validate_namespace, memory.namespace, field_of("namespace")),
        kind=check(_validate_kind, memory.kind, field_of("kind")),
        content=check(_validate_content, memory.content, field_of("content")),
        metadata=check(_metadata, memory, field_of("metadata")),
        embedding=(
            check(validate_vector, memory.embedding, dimension, field_of("embedding"))
            if len(memory.embedding)
            else None
        ),
        session=check(_validate_session, memory.session, field_of("session")),
        expire_time=check(_validate_expire_time, memory, field_of("expire_time")),
        request_id=check(_request_id, request.request_id, f"{prefix}request_id"),
    )
    if problems:
        raise InvalidArgument(problems)
    return new


def _request_id(value: str, field_name: str) -> str:
    return validate_request_id(value, field=field_name)


def _metadata(memory: memory_pb2.Memory, field_name: str) -> dict[str, Any]:
    text = struct_to_json(memory.metadata, field=field_name, max_bytes=MAX_METADATA_BYTES)
    value: dict[str, Any] = _integral(json.loads(text))
    return value


def _integral(value: Any) -> Any:
    """Struct numbers are doubles: 2 arrives as 2.0. Stored as 2, so the list filter
    ``metadata.n = "2"`` (a text comparison) matches what the client wrote."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


# ----------------------------------------------------------- row → proto


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


# -------------------------------------------------- near-duplicate merging


def _vectors(values: Iterable[list[float] | None]) -> list[Vector]:
    # asyncpg reads a list of lists as a 2-D array of floats; a list of Vector
    # objects is the 1-D vector[] the statements expect.
    vectors = []
    for value in values:
        if value is None:  # _create embeds every item before any write
            raise AssertionError("a memory reached the database without its embedding")
        vectors.append(Vector(value))
    return vectors


def _lock_key(tenant: str, namespace: str) -> str:
    return f"memory.memories\x1f{tenant}\x1f{namespace}"


async def _lock_namespaces(
    conn: asyncpg.Connection, tenant: str, namespaces: Iterable[str]
) -> None:
    # Sorted, so two batches touching the same namespaces cannot deadlock; one round
    # trip for all of them (unnest yields the array in order and the scan calls the
    # volatile lock function row by row, in that order).
    keys = [_lock_key(tenant, namespace) for namespace in sorted(set(namespaces))]
    await conn.execute(
        "SELECT count(*) FROM (SELECT pg_advisory_xact_lock(hashtextextended(k, 0))"
        " FROM unnest($1::text[]) AS k) AS locked",
        keys,
    )


async def _nearest_existing(
    conn: asyncpg.Connection, tenant: str, items: Sequence[NewMemory], threshold: float
) -> dict[int, tuple[str, float]]:
    """For each item, its most similar live memory in its namespace, if similar enough."""
    rows = await conn.fetch(
        f"""
        SELECT q.ord, m.id, 1 - (m.embedding <=> q.v) AS similarity
        FROM unnest($2::vector[], $3::text[]) WITH ORDINALITY AS q(v, ns, ord)
        CROSS JOIN LATERAL (
            SELECT id, embedding FROM memory.memories
            WHERE tenant = $1 AND namespace = q.ns AND {_LIVE}
            ORDER BY {nearest("q.v")}
            LIMIT 1
        ) AS m
        WHERE 1 - (m.embedding <=> q.v) >= $4
        """,
        tenant,
        _vectors(item.embedding for item in items),
        [item.namespace for item in items],
        threshold,
    )
    return {row["ord"] - 1: (row["id"], row["similarity"]) for row in rows}


async def _similar_earlier(
    conn: asyncpg.Connection, items: Sequence[NewMemory], threshold: float
) -> dict[int, list[tuple[int, float]]]:
    """Pairs of batch items in one namespace that are near-duplicates of each other
    (computed by pgvector in C: 500 items are 125k distances)."""
    if len(items) < 2:
        return {}
    rows = await conn.fetch(
        """
        WITH q AS (
            SELECT * FROM unnest($1::vector[], $2::text[]) WITH ORDINALITY AS q(v, ns, ord)
        )
        SELECT b.ord AS later, a.ord AS earlier, 1 - (a.v <=> b.v) AS similarity
        FROM q AS a JOIN q AS b ON a.ns = b.ns AND a.ord < b.ord
        WHERE 1 - (a.v <=> b.v) >= $3
        """,
        _vectors(item.embedding for item in items),
        [item.namespace for item in items],
        threshold,
    )
    pairs: dict[int, list[tuple[int, float]]] = {}
    for row in rows:
        pairs.setdefault(row["later"] - 1, []).append((row["earlier"] - 1, row["similarity"]))
    return pairs


async def _insert(
    conn: asyncpg.Connection, tenant: str, new: dict[str, Sequence[NewMemory]]
) -> dict[str, asyncpg.Record]:
    """Inserts one memory per id of ``new`` from the writes merged into it."""
    if not new:
        return {}
    groups = list(new.values())
    merged = [merged_fields(group) for group in groups]
    # clock_timestamp(), not now(): rows of one batch get distinct, increasing
    # creation times, so "newest first" keeps the batch's order stable. It is read
    # once per row (the LATERAL refers to the row, so it is evaluated per row) and
    # used for both columns: two calls would differ by a microsecond.
    rows = await conn.fetch(
        f"""
            INSERT INTO memory.memories (tenant, id, namespace, kind, content, metadata,
                embedding, session, expire_time, merge_count, create_time, update_time)
            SELECT $1, u.id, u.namespace, u.kind, u.content, u.metadata, u.embedding,
                u.session, u.expire_time, u.merges, t.now, t.now
            FROM unnest($2::text[], $3::text[], $4::smallint[], $5::text[], $6::jsonb[],
                $7::vector[], $8::text[], $9::timestamptz[], $10::int[])
                AS u(id, namespace, kind, content, metadata, embedding, session,
                     expire_time, merges)
            CROSS JOIN LATERAL (SELECT clock_timestamp() AS now, u.id AS row_id) AS t
            RETURNING {_COLUMNS}
            """,
        tenant,
        list(new),
        [group[0].namespace for group in groups],
        [group[0].kind for group in groups],
        [m["content"] for m in merged],
        [m["metadata"] for m in merged],
        _vectors(m["embedding"] for m in merged),
        [m["session"] for m in merged],
        [m["expire_time"] for m in merged],
        [len(group) - 1 for group in groups],
    )
    return {row["id"]: row for row in rows}


async def _merge_into(
    conn: asyncpg.Connection, tenant: str, existing: dict[str, Sequence[NewMemory]]
) -> dict[str, asyncpg.Record]:
    """Applies merged writes to existing memories; a memory deleted meanwhile is
    missing from the result."""
    if not existing:
        return {}
    groups = list(existing.values())
    merged = [merged_fields(group) for group in groups]
    rows = await conn.fetch(
        f"""
            UPDATE memory.memories AS m SET
                content = u.content, embedding = u.embedding,
                metadata = m.metadata || u.metadata,
                session = COALESCE(u.session, m.session), expire_time = u.expire_time,
                merge_count = m.merge_count + u.merges, version = m.version + 1,
                update_time = clock_timestamp()
            FROM unnest($2::text[], $3::text[], $4::vector[], $5::jsonb[], $6::text[],
                $7::timestamptz[], $8::int[])
                AS u(id, content, embedding, metadata, session, expire_time, merges)
            WHERE m.tenant = $1 AND m.id = u.id
            RETURNING {", ".join("m." + c.strip() for c in _COLUMNS.split(","))}
            """,
        tenant,
        list(existing),
        [m["content"] for m in merged],
        _vectors(m["embedding"] for m in merged),
        [m["metadata"] for m in merged],
        [m["session"] for m in merged],
        [m["expire_time"] for m in merged],
        [len(group) for group in groups],
    )
    return {row["id"]: row for row in rows}


async def write_memories(
    conn: asyncpg.Connection, tenant: str, items: Sequence[NewMemory], threshold: float
) -> list[asyncpg.Record]:
    """Inserts or merges ``items`` (embedded) inside the caller's transaction; returns
    the resulting row of each item, in order."""
    if not items:
        return []
    await _lock_namespaces(conn, tenant, (item.namespace for item in items))
    # The one-nearest lookup walks the index in exact order with a small beam: a
    # near-duplicate (similarity >= the threshold, 0.95 by default) lies far closer
    # than anything else, so a beam of MERGE_EF_SEARCH finds it at a fraction of the
    # search beam's cost: at 20k rows in 20 namespaces, 0.24 ms per item and 500 of 500
    # planted near-duplicates (similarity 0.967-0.99) found; ef 40 costs 0.40 ms.
    await conn.execute(
        "SELECT set_config('hnsw.iterative_scan', 'strict_order', true),"
        " set_config('hnsw.ef_search', $1, true)",
        str(MERGE_EF_SEARCH),
    )
    existing = await _nearest_existing(conn, tenant, items, threshold)
    earlier = await _similar_earlier(conn, items, threshold)
    targets, target_of = plan_merges(len(items), existing, earlier)
    rows = await _apply_plan(conn, tenant, items, targets)
    return [rows[target_of[j]] for j in range(len(items))]


async def _apply_plan(
    conn: asyncpg.Connection, tenant: str, items: Sequence[NewMemory], targets: list[MergeTarget]
) -> dict[int, asyncpg.Record]:
    """Runs the planned updates and inserts; returns each target's resulting row."""
    groups = {
        t: [items[j] for j in target.items] for t, target in enumerate(targets) if target.items
    }
    to_update = {targets[t].existing_id: t for t in groups if targets[t].existing_id}
    updated = await _merge_into(
        conn, tenant, {mid: groups[t] for mid, t in to_update.items() if mid}
    )
    rows = {t: updated[mid] for mid, t in to_update.items() if mid in updated}
    # New memories, plus any merge target deleted since the lookup (rare race).
    to_insert = {new_id(): t for t in groups if t not in rows}
    inserted = await _insert(conn, tenant, {mid: groups[t] for mid, t in to_insert.items()})
    rows.update({t: inserted[mid] for mid, t in to_insert.items()})
    return rows


# ----------------------------------------------------------- list filter


def _kind_value(text: str) -> int:
    name = text.upper()
    name = name if name.startswith("MEMORY_KIND_") else "MEMORY_KIND_" + name
    try:
        value = memory_pb2.MemoryKind.Value(name)
    except ValueError:
        raise ValueError("expected SEMANTIC, EPISODIC or PROCEDURAL") from None
    if value not in _KINDS:
        raise ValueError("expected SEMANTIC, EPISODIC or PROCEDURAL")
    return value


def _namespace_pattern(text: str) -> str:
    base = text[:-2] if text.endswith("/*") else text
    try:
        validate_namespace(base, "filter")
    except InvalidArgument:
        raise ValueError("expected a namespace path, optionally ending in /*") from None
    return text


def _session_id(text: str) -> str:
    try:
        return SESSIONS.parse(text, field="filter")
    except InvalidArgument:
        raise ValueError("expected sessions/{session}") from None


_LIST_FILTER: Final = {
    "namespace": FieldRule(EQUALITY, _namespace_pattern),
    "kind": FieldRule(EQUALITY, _kind_value),
    "session": FieldRule(EQUALITY, _session_id),
    "metadata.*": FieldRule(EQUALITY),
}


def like_prefix(namespace: str) -> str:
    """``LIKE`` pattern of everything below ``namespace`` (``_`` is a wildcard to LIKE
    and a legal namespace character, so it is escaped)."""
    return namespace.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "/%"


class _Where:
    """SQL conditions with positional parameters, built in one place."""

    def __init__(self, tenant: str) -> None:
        self.params: list[Any] = [tenant]
        self.clauses: list[str] = ["tenant = $1", _LIVE]

    def param(self, value: Any) -> str:
        self.params.append(value)
        return f"${len(self.params)}"

    def namespace_under(self, namespace: str) -> None:
        """The namespace itself and every path below it, segment-wise."""
        exact, below = self.param(namespace), self.param(like_prefix(namespace))
        self.clauses.append(f"(namespace = {exact} OR namespace LIKE {below})")

    def sql(self) -> str:
        return " AND ".join(self.clauses)


def _apply_list_terms(where: _Where, terms: Sequence[Term]) -> None:
    for term in terms:
        if term.field == "namespace":
            if term.value.endswith("/*"):
                where.namespace_under(term.value[:-2])
            else:
                where.clauses.append(f"namespace = {where.param(term.value)}")
        elif term.field == "kind":
            where.clauses.append(f"kind = {where.param(_kind_value(term.value))}")
        elif term.field == "session":
            where.clauses.append(f"session = {where.param(_session_id(term.value))}")
        else:  # metadata.<key>: text comparison, so 5 and "5" both match "5"
            key, value = where.param(term.key), where.param(term.value)
            where.clauses.append(f"metadata ->> {key} = {value}")


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _position(row: asyncpg.Record) -> dict[str, Any]:
    micros = (row["create_time"] - _EPOCH) // timedelta(microseconds=1)
    return {"t": micros, "id": row["id"]}


def _after(position: dict[str, Any]) -> tuple[datetime, str]:
    micros, memory_id = position.get("t"), position.get("id")
    if not isinstance(micros, int) or not isinstance(memory_id, str):
        raise InvalidArgument("page_token", "not a page token issued by this method")
    return _EPOCH + timedelta(microseconds=micros), memory_id


# ---------------------------------------------------------------- search


@dataclass(frozen=True)
class SearchQuery:
    """A validated SearchMemories request, its vector resolved."""

    vector: list[float]
    namespace_prefix: str
    kinds: tuple[int, ...]
    metadata_filter: str | None
    top_k: int
    min_score: float


def search_sql(tenant: str, query: SearchQuery) -> tuple[str, list[Any]]:
    """The search statement and its parameters (public so tests can EXPLAIN it).

    ORDER BY the distance operator with a LIMIT is what lets the planner walk the
    HNSW index; every filter is a post-filter that ``hnsw.iterative_scan`` keeps
    feeding until ``top_k`` rows pass.
    """
    where = _Where(tenant)
    vector = where.param(query.vector)
    if query.namespace_prefix:
        where.namespace_under(query.namespace_prefix)
    if query.kinds:
        where.clauses.append(f"kind = ANY({where.param(list(query.kinds))}::smallint[])")
    if query.metadata_filter is not None:
        where.clauses.append(f"metadata @> {where.param(query.metadata_filter)}::jsonb")
    limit = where.param(query.top_k)
    sql = (
        f"SELECT {_COLUMNS}, embedding <=> {vector} AS distance FROM memory.memories"
        f" WHERE {where.sql()} ORDER BY {nearest(vector)} LIMIT {limit}"
    )
    return sql, where.params


def search_session_settings(settings: MemorySettings) -> dict[str, str]:
    """Connection defaults for searches: ``hnsw.ef_search`` from the settings and
    ``relaxed_order`` iterative scans (the scan continues past filtered-out rows and
    may return slightly out of order, hence the re-sort in run_search)."""
    return {
        "hnsw.ef_search": str(settings.hnsw_ef_search),
        "hnsw.iterative_scan": "relaxed_order",
    }


async def run_search(
    conn: asyncpg.Connection, tenant: str, query: SearchQuery, ef_search: int
) -> list[tuple[asyncpg.Record, float]]:
    """Runs the search; best first.

    The pool's connections carry ``search_session_settings``, so the usual search is
    one statement. Only a ``top_k`` above ``ef_search`` (which would cap the result
    count) needs a transaction to raise it with ``SET LOCAL``.
    """
    sql, params = search_sql(tenant, query)
    if query.top_k <= ef_search:
        rows = await conn.fetch(sql, *params)
    else:
        async with conn.transaction():
            await conn.execute(
                "SELECT set_config('hnsw.ef_search', $1, true),"
                " set_config('hnsw.iterative_scan', 'relaxed_order', true)",
                str(query.top_k),
            )
            rows = await conn.fetch(sql, *params)
    scored = [(row, max(-1.0, min(1.0, 1.0 - row["distance"]))) for row in rows]
    scored.sort(key=lambda hit: (-hit[1], hit[0]["id"]))
    return [hit for hit in scored if hit[1] >= query.min_score]


# ------------------------------------------------------- startup checks


def check_embedding_dimension(settings: MemorySettings) -> None:
    """The configured dimension must be the column's: fail at start, not per write."""
    if settings.embedding_dim != VECTOR_COLUMN_DIM:
        raise ConfigError(
            f"AGENTMESH_MEMORY_EMBEDDING_DIM={settings.embedding_dim}, but "
            f"memory.memories.embedding is vector({VECTOR_COLUMN_DIM}); changing it needs "
            "a migration that re-creates the column and re-embeds every memory"
        )


async def check_memory_store(pool: asyncpg.Pool, settings: MemorySettings) -> None:
    """Start-up check: the setting, the migrated column and pgvector's version agree."""
    check_embedding_dimension(settings)
    column = await pool.fetchval(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = to_regclass('memory.memories') AND attname = 'embedding'"
    )
    if column != f"vector({VECTOR_COLUMN_DIM})":
        raise ConfigError(
            f"memory.memories.embedding is {column or 'missing'}, expected "
            f"vector({VECTOR_COLUMN_DIM}); run the migrations"
        )
    version = await pool.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    parts = tuple(int(p) for p in re.findall(r"\d+", version or "0")[:3])
    if parts < MIN_PGVECTOR:
        raise ConfigError(f"pgvector {version} is too old: memories need 0.8.0 or later")


def _reloptions(options: Sequence[str] | None) -> dict[str, str]:
    return dict(option.split("=", 1) for option in options or ())


async def ensure_hnsw_index(
    pool: asyncpg.Pool, settings: MemorySettings, *, maintenance_work_mem: str = "1GB"
) -> bool:
    """Re-creates the HNSW index when its ``m`` / ``ef_construction`` differ from the
    settings; returns whether it rebuilt. Safe to call from every replica at start.

    The new index is built ``CONCURRENTLY`` under another name and swapped in, so
    writes and searches go on meanwhile. ``maintenance_work_mem`` keeps the graph
    in memory during the build (at 100k × 384, 31 s with 1 GB against 95 s with the
    64 MB default); statement_timeout is lifted for the build only.
    """
    wanted = {
        "m": str(settings.hnsw_m),
        "ef_construction": str(settings.hnsw_ef_construction),
    }
    current_sql = (
        "SELECT c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'memory' AND c.relname = $1"
    )
    async with pool.acquire() as conn:
        if _reloptions(await conn.fetchval(current_sql, HNSW_INDEX)) == wanted:
            return False
        lock = "SELECT hashtextextended('memory.memories_embedding_hnsw rebuild', 0)"
        await conn.execute(f"SELECT pg_advisory_lock(({lock}))")
        try:
            # Another replica may have rebuilt it while we waited for the lock.
            if _reloptions(await conn.fetchval(current_sql, HNSW_INDEX)) == wanted:
                return False
            await _rebuild_hnsw(conn, settings, maintenance_work_mem)
            return True
        finally:
            await conn.execute(f"SELECT pg_advisory_unlock(({lock}))")
            await conn.execute("RESET maintenance_work_mem; RESET statement_timeout")


async def _rebuild_hnsw(conn: asyncpg.Connection, settings: MemorySettings, work_mem: str) -> None:
    building = f"{HNSW_INDEX}_building"
    await conn.execute("SELECT set_config('maintenance_work_mem', $1, false)", work_mem)
    await conn.execute("SET statement_timeout = 0")
    # A build that died half-way leaves an INVALID index behind: start over.
    await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS memory.{building}")
    await conn.execute(
        f"CREATE INDEX CONCURRENTLY {building} ON memory.memories"
        f" USING hnsw (({INDEXED}) halfvec_cosine_ops)"
        f" WITH (m = {int(settings.hnsw_m)},"
        f" ef_construction = {int(settings.hnsw_ef_construction)})"
    )
    await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS memory.{HNSW_INDEX}")
    await conn.execute(f"ALTER INDEX memory.{building} RENAME TO {HNSW_INDEX}")


async def prepare_memory_store(pool: asyncpg.Pool, settings: MemorySettings) -> None:
    """The start-up hook: checks (ConfigError on a mismatch), then the index."""
    await check_memory_store(pool, settings)
    await ensure_hnsw_index(pool, settings)


async def purge_expired_memories(
    db: asyncpg.Pool | asyncpg.Connection, *, limit: int = 10_000
) -> int:
    """Deletes up to ``limit`` expired memories (reads ignore them already; this
    only reclaims space) in one statement; returns how many were deleted. The
    janitor (``janitor.py``) calls it in batches. The expiry is checked again on the
    row, so a memory whose expiry moved meanwhile stays."""
    deleted = await db.fetchval(
        """
        WITH gone AS (
            DELETE FROM memory.memories
            WHERE ctid = ANY(ARRAY(
                SELECT ctid FROM memory.memories WHERE expire_time <= now() LIMIT $1
            )) AND expire_time <= now()
            RETURNING 1)
        SELECT count(*) FROM gone
        """,
        limit,
    )
    return int(deleted)


# ------------------------------------------------------------------ RPCs


class MemoryRpcs(RpcGroup):
    """Long-term memories: create, batch create, get, list, update, delete, search."""

    @property
    def _dimension(self) -> int:
        return self.deps.settings.embedding_dim

    async def CreateMemory(
        self, request: memory_pb2.CreateMemoryRequest, context: ServicerContext
    ) -> memory_pb2.Memory:
        item = validate_create(request, self._dimension)
        (memory,) = await self._create([item], [request], batch=False)
        return memory

    async def BatchCreateMemories(
        self, request: memory_pb2.BatchCreateMemoriesRequest, context: ServicerContext
    ) -> memory_pb2.BatchCreateMemoriesResponse:
        count = len(request.requests)
        if not 1 <= count <= MAX_BATCH:
            raise InvalidArgument("requests", f"{count} items; send 1-{MAX_BATCH}")
        items = _validate_batch(request.requests, self._dimension)
        return memory_pb2.BatchCreateMemoriesResponse(
            memories=await self._create(items, request.requests, batch=True)
        )

    async def _create(
        self,
        items: list[NewMemory],
        requests: Sequence[memory_pb2.CreateMemoryRequest],
        *,
        batch: bool,
    ) -> list[memory_pb2.Memory]:
        """Embeds what needs it in ONE embedder call (outside any transaction: a
        remote provider may take seconds), then writes all or nothing."""
        missing = [item for item in items if item.embedding is None]
        vectors = await embed_checked(
            self.deps.embedder, [item.content for item in missing], self._dimension
        )
        for item, vector in zip(missing, vectors, strict=True):
            item.embedding = vector
        tenant = self.tenant()
        settings = self.deps.settings
        async with self.deps.pool.acquire() as conn, conn.transaction():
            replayed = await _claim_all(
                conn, tenant, items, requests, settings.request_id_ttl_s, batch=batch
            )
            fresh = [j for j in range(len(items)) if j not in replayed]
            rows = await write_memories(
                conn, tenant, [items[j] for j in fresh], settings.merge_similarity
            )
            results = dict(replayed)
            for j, row in zip(fresh, rows, strict=True):
                results[j] = to_proto(row)
                await remember(conn, tenant, "CreateMemory", items[j].request_id, results[j])
        return [results[j] for j in range(len(items))]

    async def GetMemory(
        self, request: memory_pb2.GetMemoryRequest, context: ServicerContext
    ) -> memory_pb2.Memory:
        memory_id = MEMORIES.parse(request.name)
        row = await self.deps.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM memory.memories WHERE tenant = $1 AND id = $2 AND {_LIVE}",
            self.tenant(),
            memory_id,
        )
        if row is None:
            raise NotFound(MEMORIES.resource_type, request.name)
        return to_proto(row)

    async def ListMemories(
        self, request: memory_pb2.ListMemoriesRequest, context: ServicerContext
    ) -> memory_pb2.ListMemoriesResponse:
        size = page_size(request.page_size, default=DEFAULT_PAGE_SIZE)
        terms = parse_filter(request.filter, _LIST_FILTER)
        query = {"filter": request.filter}
        position = decode_page_token(request.page_token, query)
        where = _Where(self.tenant())
        _apply_list_terms(where, terms)
        if position is not None:
            after_time, after_id = _after(position)
            where.clauses.append(
                f"(create_time, id) < ({where.param(after_time)}, {where.param(after_id)})"
            )
        rows = await self.deps.pool.fetch(
            f"SELECT {_COLUMNS} FROM memory.memories WHERE {where.sql()}"
            f" ORDER BY create_time DESC, id DESC LIMIT {where.param(size + 1)}",
            *where.params,
        )
        page = rows[:size]
        token = encode_page_token(_position(page[-1]), query) if len(rows) > size else ""
        return memory_pb2.ListMemoriesResponse(
            memories=[to_proto(row) for row in page], next_page_token=token
        )

    async def UpdateMemory(
        self, request: memory_pb2.UpdateMemoryRequest, context: ServicerContext
    ) -> memory_pb2.Memory:
        memory = request.memory
        memory_id = MEMORIES.parse(memory.name, field="memory.name")
        changes = self._update_values(request)
        expected = parse_etag(memory.etag, field="memory.etag") if memory.etag else None
        if "content" in changes and changes.get("embedding") is None:
            (changes["embedding"],) = await embed_checked(
                self.deps.embedder, [changes["content"]], self._dimension
            )
        tenant = self.tenant()
        async with self.deps.pool.acquire() as conn, conn.transaction():
            version = await conn.fetchval(
                f"SELECT version FROM memory.memories WHERE tenant = $1 AND id = $2 AND {_LIVE}"
                " FOR UPDATE",
                tenant,
                memory_id,
            )
            if version is None:
                raise NotFound(MEMORIES.resource_type, memory.name)
            if expected is not None and expected != version:
                raise Aborted("ETAG_MISMATCH", f"{memory.name} changed since it was read")
            where = _Where(tenant)
            sets = [f"{column} = {where.param(value)}" for column, value in changes.items()]
            where.clauses.append(f"id = {where.param(memory_id)}")
            row = await conn.fetchrow(
                f"UPDATE memory.memories SET {', '.join(sets)}, version = version + 1,"
                f" update_time = clock_timestamp() WHERE {where.sql()} RETURNING {_COLUMNS}",
                *where.params,
            )
        return to_proto(row)

    def _update_values(self, request: memory_pb2.UpdateMemoryRequest) -> dict[str, Any]:
        """Column → new value for the masked fields, each validated."""
        paths = list(request.update_mask.paths)
        if not paths:
            raise InvalidArgument(
                "update_mask", f"required: some of {', '.join(sorted(_UPDATABLE))}"
            )
        unknown = [path for path in paths if path not in _UPDATABLE]
        if unknown:
            raise InvalidArgument(
                "update_mask",
                f"cannot update {', '.join(unknown)}; updatable: {', '.join(sorted(_UPDATABLE))}",
            )
        memory = request.memory
        changes: dict[str, Any] = {}
        if "content" in paths:
            changes["content"] = _validate_content(memory.content, "memory.content")
            if len(memory.embedding):
                changes["embedding"] = validate_vector(
                    memory.embedding, self._dimension, "memory.embedding"
                )
        elif len(memory.embedding):
            raise InvalidArgument("memory.embedding", "only with content in update_mask")
        if "kind" in paths:
            changes["kind"] = _validate_kind(memory.kind, "memory.kind")
        if "metadata" in paths:
            changes["metadata"] = json.dumps(_metadata(memory, "memory.metadata"))
        if "expire_time" in paths:
            changes["expire_time"] = _validate_expire_time(memory, "memory.expire_time")
        if "namespace" in paths:
            changes["namespace"] = validate_namespace(memory.namespace, "memory.namespace")
        return changes

    async def DeleteMemory(
        self, request: memory_pb2.DeleteMemoryRequest, context: ServicerContext
    ) -> empty_pb2.Empty:
        memory_id = MEMORIES.parse(request.name)
        deleted = await self.deps.pool.fetchval(
            f"DELETE FROM memory.memories WHERE tenant = $1 AND id = $2 AND {_LIVE} RETURNING id",
            self.tenant(),
            memory_id,
        )
        if deleted is None and not request.allow_missing:
            raise NotFound(MEMORIES.resource_type, request.name)
        return empty_pb2.Empty()

    async def SearchMemories(
        self, request: memory_pb2.SearchMemoriesRequest, context: ServicerContext
    ) -> memory_pb2.SearchMemoriesResponse:
        query = await self._search_query(request)
        async with self.deps.pool.acquire() as conn:
            hits = await run_search(conn, self.tenant(), query, self.deps.settings.hnsw_ef_search)
        return memory_pb2.SearchMemoriesResponse(
            results=[
                memory_pb2.ScoredMemory(memory=to_proto(row), score=score) for row, score in hits
            ]
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
            _validate_content(request.text, "text")
        if request.namespace_prefix:
            validate_namespace(request.namespace_prefix, "namespace_prefix")
        kinds = []
        for i, kind in enumerate(request.kinds):
            if kind not in _KINDS:
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


def _validate_batch(
    requests: Sequence[memory_pb2.CreateMemoryRequest], dimension: int
) -> list[NewMemory]:
    """Validates every item; all violations of all items are reported together, each
    naming its index (``requests[3].memory.content``)."""
    items: list[NewMemory] = []
    problems: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for i, request in enumerate(requests):
        try:
            items.append(validate_create(request, dimension, prefix=f"requests[{i}]."))
        except InvalidArgument as exc:
            problems.extend(exc.violations)
            continue
        if request.request_id and request.request_id in seen:
            problems.append(
                (f"requests[{i}].request_id", f"repeats requests[{seen[request.request_id]}]")
            )
        seen.setdefault(request.request_id, i)
    if problems:
        raise InvalidArgument(problems)
    return items


async def _claim_all(
    conn: asyncpg.Connection,
    tenant: str,
    items: Sequence[NewMemory],
    requests: Sequence[memory_pb2.CreateMemoryRequest],
    ttl_s: int,
    *,
    batch: bool,
) -> dict[int, memory_pb2.Memory]:
    """Claims every item's request_id (sorted: two overlapping batches must not
    deadlock); returns the stored responses of items that were done before. A key
    reused for a different CreateMemoryRequest (single or batch item alike) is
    INVALID_ARGUMENT on that item's request_id."""
    replayed: dict[int, memory_pb2.Memory] = {}
    keyed = sorted((item.request_id, j) for j, item in enumerate(items) if item.request_id)
    for request_id, j in keyed:
        replay = await claim(
            conn,
            tenant,
            "CreateMemory",
            request_id,
            memory_pb2.Memory,
            ttl_s=ttl_s,
            request=requests[j],
            field=f"requests[{j}].request_id" if batch else "request_id",
        )
        if replay is not None:
            replayed[j] = replay
    return replayed
