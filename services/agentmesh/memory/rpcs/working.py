"""MemoryService RPCs: Working memory: per-session key/value in Redis with a TTL.

A deleted session's working memory is NOT_FOUND like the session. How it is stored
(one Redis hash, updated by one script that also enforces the limits) is
``stores/working.py``; the limits are ``domain/working.py``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Final

from google.protobuf import duration_pb2, json_format, struct_pb2

from agentmesh.core.contract import ServicerContext
from agentmesh.core.errors import InvalidArgument
from agentmesh.core.names import SESSIONS
from agentmesh.core.validation import Violations
from agentmesh.memory.deps import MemoryDeps
from agentmesh.memory.domain.working import WorkingMemoryLimitError, check_limits
from agentmesh.memory.rpc import RpcGroup
from agentmesh.memory.stores.sessions import session_create_time
from agentmesh.memory.stores.working import (
    OverLimit,
    WorkingHash,
    read_working_memory,
    update_script,
    update_working_memory,
)
from agentmesh.v1 import memory_pb2

MAX_VALUE_BYTES: Final = 64 * 1024
MIN_TTL_S: Final = 1
MAX_TTL_S: Final = 30 * 86_400
_KEY: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_KEY_RULE: Final = "keys are 1-128 characters of A-Z, a-z, 0-9, '_', '.', ':' and '-'"
_SUFFIX: Final = "/workingMemory"


def parse_name(name: str, *, field: str) -> str:
    """The session id of ``sessions/{session}/workingMemory``."""
    if not name.endswith(_SUFFIX):
        raise InvalidArgument(field, f"{name!r} is not of the form sessions/{{session}}{_SUFFIX}")
    return SESSIONS.parse(name[: -len(_SUFFIX)], field=field)


def _name(session_id: str) -> str:
    return SESSIONS.format(session_id) + _SUFFIX


def _encode_values(
    values: Mapping[str, struct_pb2.Value], violations: Violations, *, field: str
) -> list[str]:
    """Flattened key/JSON pairs for the store; checks keys and value sizes."""
    pairs: list[str] = []
    for key, value in values.items():
        where = f"{field}[{json.dumps(key)}]"
        if not _KEY.fullmatch(key):
            violations.add(where, _KEY_RULE)
            continue
        try:
            text = json.dumps(json_format.MessageToDict(value), separators=(",", ":"))
        except (ValueError, json_format.Error) as exc:  # NaN or infinity
            violations.add(where, f"not representable as JSON: {exc}")
            continue
        if len(text.encode()) > MAX_VALUE_BYTES:
            violations.add(where, f"larger than {MAX_VALUE_BYTES} bytes as JSON")
            continue
        pairs.extend((key, text))
    return pairs


def _check_remove_keys(keys: Sequence[str], violations: Violations) -> None:
    for i, key in enumerate(keys):
        if not _KEY.fullmatch(key):
            violations.add(f"remove_keys[{i}]", _KEY_RULE)


def _ttl_ms(ttl: duration_pb2.Duration, violations: Violations) -> int:
    """A requested TTL in milliseconds, checked against the contract's 1 s-30 days."""
    seconds = ttl.seconds + ttl.nanos / 1e9
    if not MIN_TTL_S <= seconds <= MAX_TTL_S:
        violations.add("ttl", f"must be between {MIN_TTL_S} s and {MAX_TTL_S} s (30 days)")
    return ttl.seconds * 1000 + ttl.nanos // 1_000_000


def _working_memory_proto(
    session_id: str, stored: WorkingHash | None, *, now_us: int, ttl_ms: int
) -> memory_pb2.WorkingMemory:
    """The wire message for a stored working memory (None: it has none)."""
    result = memory_pb2.WorkingMemory(name=_name(session_id))
    if stored is None:
        return result
    for key, raw in stored.values.items():
        json_format.ParseDict(json.loads(raw), result.values[key])
    if stored.update_us:
        result.update_time.FromMicroseconds(stored.update_us)
    if ttl_ms > 0:
        result.expire_time.FromMicroseconds(now_us + ttl_ms * 1000)
    return result


class WorkingMemoryRpcs(RpcGroup):
    """Working memory: per-session key/value in Redis with a TTL."""

    def __init__(self, deps: MemoryDeps) -> None:
        super().__init__(deps)
        self._update_script = update_script(deps.redis)

    async def GetWorkingMemory(
        self, request: memory_pb2.GetWorkingMemoryRequest, context: ServicerContext
    ) -> memory_pb2.WorkingMemory:
        session_id = parse_name(request.name, field="name")
        tenant = self.tenant()
        created = await session_create_time(self.deps.pool, tenant, session_id)
        stored, ttl_ms = await read_working_memory(self.deps.redis, tenant, session_id, created)
        return _working_memory_proto(
            session_id, stored, now_us=time.time_ns() // 1000, ttl_ms=ttl_ms
        )

    async def UpdateWorkingMemory(
        self, request: memory_pb2.UpdateWorkingMemoryRequest, context: ServicerContext
    ) -> memory_pb2.WorkingMemory:
        violations = Violations()
        session_id = violations.check(
            lambda: parse_name(request.working_memory.name, field="working_memory.name")
        )
        pairs = _encode_values(
            request.working_memory.values, violations, field="working_memory.values"
        )
        _check_remove_keys(request.remove_keys, violations)
        settings = self.deps.settings
        max_keys, max_bytes = settings.working_max_keys, settings.working_max_bytes
        check_limits(pairs, request.remove_keys, violations, max_keys=max_keys, max_bytes=max_bytes)
        ttl_ms = (
            _ttl_ms(request.ttl, violations)
            if request.HasField("ttl")
            else settings.working_ttl_s * 1000
        )
        violations.raise_if_any()
        assert session_id is not None
        tenant = self.tenant()
        created = await session_create_time(self.deps.pool, tenant, session_id)
        update_us = time.time_ns() // 1000
        updated = await update_working_memory(
            self._update_script,
            tenant,
            session_id,
            created,
            pairs=pairs,
            remove_keys=request.remove_keys,
            update_us=update_us,
            ttl_ms=ttl_ms,
            max_keys=max_keys,
            max_bytes=max_bytes,
        )
        if isinstance(updated, OverLimit):
            raise WorkingMemoryLimitError(
                _name(session_id), updated.dimension, updated.projected, updated.limit
            )
        return _working_memory_proto(session_id, updated, now_us=update_us, ttl_ms=ttl_ms)
