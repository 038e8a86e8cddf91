"""Validation of the long-term memory RPCs' requests.

Every bad input is INVALID_ARGUMENT naming its field before anything reaches
PostgreSQL: a wrong vector size must never surface as a database error. A create
reports every bad field of the item at once (``requests[3].memory.content`` in a
batch, all items together).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final

from agentmesh.core.errors import InvalidArgument
from agentmesh.core.filtering import EQUALITY, FieldRule, parse_filter
from agentmesh.core.names import SESSIONS
from agentmesh.core.validation import NUL, NUL_RULE, Violations, validate_request_id
from agentmesh.memory.convert import from_timestamp, struct_to_jsonb
from agentmesh.memory.domain.merging import NewMemory
from agentmesh.memory.stores.memories import MemoryFilter
from agentmesh.v1 import memory_pb2

MAX_CONTENT_CHARS: Final = 16_384
MAX_METADATA_BYTES: Final = 16 * 1024
MAX_BATCH: Final = 500
MAX_IMPORT: Final = 1000
"""Most memories one ImportMemories call takes (a 384-dimension slice with vectors is
about 1.6 MB of protobuf, under the 4 MiB message limit with its text)."""
MAX_BATCH_CONTENT_CHARS: Final = 1024 * 1024
"""Most characters of content one BatchCreateMemories or ImportMemories embeds (1 Mi):
bounds one call's embedding work, whatever the item count and the per-item limit allow."""
MAX_NAMESPACE_CHARS: Final = 1024

_SEGMENT = r"[A-Za-z0-9_.-]+"
_NAMESPACE: Final = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT}){{0,7}}")
KINDS: Final = frozenset(
    {
        memory_pb2.MEMORY_KIND_SEMANTIC,
        memory_pb2.MEMORY_KIND_EPISODIC,
        memory_pb2.MEMORY_KIND_PROCEDURAL,
    }
)
UPDATABLE: Final = frozenset({"content", "kind", "metadata", "expire_time", "namespace"})


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


def validate_content(content: str, field_name: str) -> str:
    if not content:
        raise InvalidArgument(field_name, "required: 1-16384 characters")
    if len(content) > MAX_CONTENT_CHARS:
        raise InvalidArgument(field_name, f"{len(content)} characters; at most {MAX_CONTENT_CHARS}")
    if NUL in content:
        raise InvalidArgument(field_name, NUL_RULE)
    return content


def validate_kind(kind: int, field_name: str) -> int:
    if kind == memory_pb2.MEMORY_KIND_UNSPECIFIED:
        return memory_pb2.MEMORY_KIND_SEMANTIC
    if kind not in KINDS:
        raise InvalidArgument(field_name, f"unknown kind {kind}")
    return kind


def validate_expire_time(memory: memory_pb2.Memory, field_name: str) -> datetime | None:
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


def validate_metadata(memory: memory_pb2.Memory, field_name: str) -> dict[str, Any]:
    text = struct_to_jsonb(memory.metadata, field=field_name, max_bytes=MAX_METADATA_BYTES)
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


# ---------------------------------------------------------------- creates


def _new_memory(
    memory: memory_pb2.Memory, dimension: int, at: str, violations: Violations
) -> NewMemory | None:
    """Checks one memory's fields (violations named ``{at}content`` and so on, added to
    ``violations``); the item, or None when one of its fields is bad."""
    before = len(violations.items)
    namespace = violations.check(lambda: validate_namespace(memory.namespace, at + "namespace"))
    kind = violations.check(lambda: validate_kind(memory.kind, at + "kind"))
    content = violations.check(lambda: validate_content(memory.content, at + "content"))
    metadata = violations.check(lambda: validate_metadata(memory, at + "metadata"))
    embedding = (
        violations.check(lambda: validate_vector(memory.embedding, dimension, at + "embedding"))
        if len(memory.embedding)
        else None
    )
    session = violations.check(lambda: _validate_session(memory.session, at + "session"))
    expire_time = violations.check(lambda: validate_expire_time(memory, at + "expire_time"))
    if len(violations.items) > before:
        return None
    # No violation: every check returned its validator's value (None only where valid).
    assert namespace is not None
    assert kind is not None
    assert content is not None
    assert metadata is not None
    return NewMemory(
        namespace=namespace,
        kind=kind,
        content=content,
        metadata=metadata,
        embedding=embedding,
        session=session,
        expire_time=expire_time,
        request_id="",
    )


def validate_create(
    request: memory_pb2.CreateMemoryRequest, dimension: int, prefix: str = ""
) -> NewMemory:
    """Checks one create request; violations name fields under ``prefix``
    (``requests[3].`` in a batch). All violations of the item are reported at once."""
    if not request.HasField("memory"):
        raise InvalidArgument(f"{prefix}memory", "required")
    violations = Violations()
    item = _new_memory(request.memory, dimension, f"{prefix}memory.", violations)
    request_id = violations.check(
        lambda: validate_request_id(request.request_id, field=f"{prefix}request_id")
    )
    violations.raise_if_any()
    assert item is not None
    assert request_id is not None
    item.request_id = request_id
    return item


def _check_content_total(total: int, field: str) -> None:
    if total > MAX_BATCH_CONTENT_CHARS:
        raise InvalidArgument(
            field,
            f"{total} characters of content in all; a call embeds at most"
            f" {MAX_BATCH_CONTENT_CHARS}: split it",
        )


def validate_import(memories: Sequence[memory_pb2.Memory], dimension: int) -> list[NewMemory]:
    """Validates an ImportMemories slice: 1-MAX_IMPORT items, their content bounded in
    all, each item as CreateMemory checks it; every violation of every item reported
    together, each naming its index (``memories[3].content``)."""
    count = len(memories)
    if not 1 <= count <= MAX_IMPORT:
        raise InvalidArgument("memories", f"{count} items; send 1-{MAX_IMPORT}")
    _check_content_total(sum(len(memory.content) for memory in memories), "memories")
    violations = Violations()
    items = [
        _new_memory(memory, dimension, f"memories[{i}].", violations)
        for i, memory in enumerate(memories)
    ]
    violations.raise_if_any()
    return [item for item in items if item is not None]


def validate_batch(
    requests: Sequence[memory_pb2.CreateMemoryRequest], dimension: int
) -> list[NewMemory]:
    """Validates every item; all violations of all items are reported together, each
    naming its index (``requests[3].memory.content``)."""
    count = len(requests)
    if not 1 <= count <= MAX_BATCH:
        raise InvalidArgument("requests", f"{count} items; send 1-{MAX_BATCH}")
    _check_content_total(sum(len(request.memory.content) for request in requests), "requests")
    items: list[NewMemory] = []
    violations = Violations()
    seen: dict[str, int] = {}
    for i, request in enumerate(requests):
        item = violations.check(partial(validate_create, request, dimension, f"requests[{i}]."))
        if item is None:
            continue
        items.append(item)
        if request.request_id and request.request_id in seen:
            violations.add(
                f"requests[{i}].request_id", f"repeats requests[{seen[request.request_id]}]"
            )
        seen.setdefault(request.request_id, i)
    violations.raise_if_any()
    return items


# ----------------------------------------------------------------- update


def update_values(request: memory_pb2.UpdateMemoryRequest, dimension: int) -> dict[str, Any]:
    """Column → new value for the masked fields, each validated."""
    paths = list(request.update_mask.paths)
    if not paths:
        raise InvalidArgument("update_mask", f"required: some of {', '.join(sorted(UPDATABLE))}")
    unknown = [path for path in paths if path not in UPDATABLE]
    if unknown:
        raise InvalidArgument(
            "update_mask",
            f"cannot update {', '.join(unknown)}; updatable: {', '.join(sorted(UPDATABLE))}",
        )
    memory = request.memory
    changes: dict[str, Any] = {}
    if "content" in paths:
        changes["content"] = validate_content(memory.content, "memory.content")
        if len(memory.embedding):
            changes["embedding"] = validate_vector(memory.embedding, dimension, "memory.embedding")
    elif len(memory.embedding):
        raise InvalidArgument("memory.embedding", "only with content in update_mask")
    if "kind" in paths:
        changes["kind"] = validate_kind(memory.kind, "memory.kind")
    if "metadata" in paths:
        changes["metadata"] = json.dumps(validate_metadata(memory, "memory.metadata"))
    if "expire_time" in paths:
        changes["expire_time"] = validate_expire_time(memory, "memory.expire_time")
    if "namespace" in paths:
        changes["namespace"] = validate_namespace(memory.namespace, "memory.namespace")
    return changes


# ------------------------------------------------------------ list filter


def _kind_value(text: str) -> int:
    name = text.upper()
    name = name if name.startswith("MEMORY_KIND_") else "MEMORY_KIND_" + name
    try:
        value = memory_pb2.MemoryKind.Value(name)
    except ValueError:
        raise ValueError("expected SEMANTIC, EPISODIC or PROCEDURAL") from None
    if value not in KINDS:
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


def list_filter(text: str) -> MemoryFilter:
    """The ListMemories ``filter``: ``namespace`` (``path`` or ``path/*`` for the path
    and everything below it), ``kind``, ``session`` and ``metadata.<key>``, each with
    ``=``, joined by AND."""
    namespaces: list[str] = []
    namespaces_under: list[str] = []
    kinds: list[int] = []
    sessions: list[str] = []
    metadata: list[tuple[str, str]] = []
    for term in parse_filter(text, _LIST_FILTER):
        if term.field == "namespace":
            if term.value.endswith("/*"):
                namespaces_under.append(term.value[:-2])
            else:
                namespaces.append(term.value)
        elif term.field == "kind":
            kinds.append(_kind_value(term.value))
        elif term.field == "session":
            sessions.append(_session_id(term.value))
        else:  # metadata.<key>
            metadata.append((term.key, term.value))
    return MemoryFilter(namespaces, namespaces_under, kinds, sessions, metadata)
