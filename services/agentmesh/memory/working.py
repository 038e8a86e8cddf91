"""MemoryService RPCs: Working memory: per-session key/value in Redis with a TTL.

One Redis hash per session (``stores.sessions.working_memory_key``): a field per client key,
its value as JSON text. Two reserved fields, named with ``@`` which client keys cannot
contain, are never shown to clients:

- ``@update_time``: when the hash last changed (microseconds since the epoch);
- ``@session``: the create time of the session that wrote it. A session id can be
  deleted and created again; an UpdateWorkingMemory racing a DeleteSession could
  leave a hash behind, and the stamp keeps the new session from inheriting it.

A deleted session's working memory is NOT_FOUND like the session, but stays in Redis
until the session is purged (its own TTL still runs), so UndeleteSession gives it
back: the undeleted session keeps its create time, hence its stamp.

An update is one Lua script, so merge, removal, TTL and stamps apply atomically in
one round trip. The script also enforces the limits of one working memory
(``AGENTMESH_MEMORY_WORKING_MAX_KEYS``, ``..._MAX_BYTES``; the size counts each client
key's length plus its value's JSON, in bytes): it works out what the merge would
leave, and when that is over a limit and larger than what is stored it changes
nothing and reports the limit (RESOURCE_EXHAUSTED, see ``WorkingMemoryLimitError``).
Checking and writing in one script is what makes the limit hold under concurrent
updates: two merges cannot both fit in the same remaining room.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cached_property
from typing import Final

import grpc
from google.protobuf import duration_pb2, json_format, struct_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from redis.commands.core import AsyncScript

from agentmesh.core.contract import ServicerContext
from agentmesh.core.errors import ERROR_DOMAIN, DomainError, InvalidArgument
from agentmesh.core.names import SESSIONS
from agentmesh.memory.rpc import RpcGroup
from agentmesh.memory.sessions import Violations
from agentmesh.memory.stores.sessions import session_create_time, working_memory_key
from agentmesh.v1 import memory_pb2

MAX_VALUE_BYTES: Final = 64 * 1024
MIN_TTL_S: Final = 1
MAX_TTL_S: Final = 30 * 86_400
_KEY: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_KEY_RULE: Final = "keys are 1-128 characters of A-Z, a-z, 0-9, '_', '.', ':' and '-'"
_SUFFIX: Final = "/workingMemory"
_UPDATE_TIME: Final = b"@update_time"
_SESSION: Final = b"@session"

# KEYS[1]: the hash. ARGV: session stamp, update time (µs), TTL (ms), max keys, max
# bytes, n, then n key/value pairs, then the keys to remove. Returns {0, the whole hash
# after the update}, or {1, 'keys' | 'bytes', what the merge would reach, the limit}
# when the merge would go over a limit, having changed nothing. A merge that does not
# grow an over-limit dimension passes (limits may be lowered under stored data, and
# removing keys must always work). Sizes are Lua's `#`, bytes: Python counts the same.
_UPDATE_SCRIPT: Final = """
local stale = redis.call('HGET', KEYS[1], '@session') ~= ARGV[1]
local max_keys, max_bytes = tonumber(ARGV[4]), tonumber(ARGV[5])
local n = tonumber(ARGV[6])
local sizes, keys, bytes = {}, 0, 0
if not stale then
  local flat = redis.call('HGETALL', KEYS[1])
  for i = 1, #flat, 2 do
    local key = flat[i]
    if string.sub(key, 1, 1) ~= '@' then
      sizes[key] = #key + #flat[i + 1]
      keys, bytes = keys + 1, bytes + sizes[key]
    end
  end
end
local old_keys, old_bytes = keys, bytes
for i = 0, n - 1 do
  local key, value = ARGV[7 + 2 * i], ARGV[8 + 2 * i]
  if sizes[key] then bytes = bytes - sizes[key] else keys = keys + 1 end
  sizes[key] = #key + #value
  bytes = bytes + sizes[key]
end
for i = 7 + 2 * n, #ARGV do
  local key = ARGV[i]
  if sizes[key] then
    keys, bytes = keys - 1, bytes - sizes[key]
    sizes[key] = nil
  end
end
if keys > max_keys and keys > old_keys then return {1, 'keys', keys, max_keys} end
if bytes > max_bytes and bytes > old_bytes then return {1, 'bytes', bytes, max_bytes} end
if stale then redis.call('DEL', KEYS[1]) end
for i = 0, n - 1 do
  redis.call('HSET', KEYS[1], ARGV[7 + 2 * i], ARGV[8 + 2 * i])
end
for i = 7 + 2 * n, #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
end
redis.call('HSET', KEYS[1], '@session', ARGV[1], '@update_time', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {0, redis.call('HGETALL', KEYS[1])}
"""

_LIMITS: Final = {
    "keys": ("keys", "working_memory_keys", "WorkingMemoryKeysPerSession"),
    "bytes": ("bytes", "working_memory_bytes", "WorkingMemoryBytesPerSession"),
}
"""Per dimension: the unit in messages, the quota metric and the quota id."""


class WorkingMemoryLimitError(DomainError):
    """An update would take a working memory over one of its limits.

    RESOURCE_EXHAUSTED, not INVALID_ARGUMENT: the same request fits a working memory
    that holds less, so it is the stored state that is out of room (AIP-193's quota
    case), and ``QuotaFailure`` says which limit and how far the merge would go.
    No ``RetryInfo``, unlike the core's ``ResourceExhausted``: nothing frees room on
    its own short of the whole working memory expiring, so retrying the same request
    does not help (AIP-194: RESOURCE_EXHAUSTED is not retried by default); the caller
    has to remove keys (``remove_keys``) or write less.
    """

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, name: str, dimension: str, projected: int, limit: int) -> None:
        unit, metric, quota_id = _LIMITS[dimension]
        self.violation = error_details_pb2.QuotaFailure.Violation(
            subject=name,
            description=f"{projected} {unit} after the update; at most {limit} per working memory",
            api_service=ERROR_DOMAIN,
            quota_metric=f"{ERROR_DOMAIN}/{metric}",
            quota_id=quota_id,
            quota_dimensions={"working_memory": name},
            quota_value=limit,
        )
        super().__init__(
            f"{name} would hold {projected} {unit}, over its limit of {limit}; nothing was"
            " changed: remove keys (remove_keys) or write less",
            reason="WORKING_MEMORY_LIMIT_EXCEEDED",
            metadata={
                "resource_name": name,
                "limit_name": dimension,
                "limit": str(limit),
                "projected": str(projected),
            },
        )

    def details(self) -> Sequence[Message]:
        return (error_details_pb2.QuotaFailure(violations=[self.violation]),)


def parse_name(name: str, *, field: str) -> str:
    """The session id of ``sessions/{session}/workingMemory``."""
    if not name.endswith(_SUFFIX):
        raise InvalidArgument(field, f"{name!r} is not of the form sessions/{{session}}{_SUFFIX}")
    return SESSIONS.parse(name[: -len(_SUFFIX)], field=field)


def _session_stamp(created: datetime) -> str:
    return created.isoformat()


def _encode_values(
    values: Mapping[str, struct_pb2.Value], violations: Violations, *, field: str
) -> list[str]:
    """Flattened key/JSON pairs for the script; checks keys and value sizes."""
    pairs: list[str] = []
    for key, value in values.items():
        where = f"{field}[{json.dumps(key)}]"
        if not _KEY.match(key):
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
        if not _KEY.match(key):
            violations.add(f"remove_keys[{i}]", _KEY_RULE)


def _check_limits(
    pairs: Sequence[str],
    remove_keys: Sequence[str],
    violations: Violations,
    *,
    max_keys: int,
    max_bytes: int,
) -> None:
    """INVALID_ARGUMENT for a request that no working memory could take: what it sets
    (and does not remove again) is over a limit by itself, whatever is stored."""
    removed = set(remove_keys)
    kept = [
        (key, text) for key, text in zip(pairs[::2], pairs[1::2], strict=True) if key not in removed
    ]
    field = "working_memory.values"
    if len(kept) > max_keys:
        violations.add(field, f"{len(kept)} keys; a working memory holds at most {max_keys}")
    size = sum(len(key.encode()) + len(text.encode()) for key, text in kept)
    if size > max_bytes:
        violations.add(
            field,
            f"{size} bytes of keys and JSON values; a working memory holds at most {max_bytes}",
        )


def _ttl_ms(ttl: duration_pb2.Duration, violations: Violations) -> int:
    """A requested TTL in milliseconds, checked against the contract's 1 s-30 days."""
    seconds = ttl.seconds + ttl.nanos / 1e9
    if not MIN_TTL_S <= seconds <= MAX_TTL_S:
        violations.add("ttl", f"must be between {MIN_TTL_S} s and {MAX_TTL_S} s (30 days)")
    return ttl.seconds * 1000 + ttl.nanos // 1_000_000


def _from_hash(
    session_id: str, stored: Mapping[bytes, bytes], stamp: str, *, now_us: int, ttl_ms: int
) -> memory_pb2.WorkingMemory:
    """The wire message for a hash read back from Redis (reserved fields hidden). A hash
    stamped by an earlier session of the same id counts as empty."""
    result = memory_pb2.WorkingMemory(name=SESSIONS.format(session_id) + _SUFFIX)
    if not stored or stored.get(_SESSION, b"").decode() != stamp:
        return result
    for key, raw in stored.items():
        if key.startswith(b"@"):
            continue
        json_format.ParseDict(json.loads(raw), result.values[key.decode()])
    updated_us = int(stored.get(_UPDATE_TIME, b"0"))
    if updated_us:
        result.update_time.FromMicroseconds(updated_us)
    if ttl_ms > 0:
        result.expire_time.FromMicroseconds(now_us + ttl_ms * 1000)
    return result


class WorkingMemoryRpcs(RpcGroup):
    """Working memory: per-session key/value in Redis with a TTL."""

    async def GetWorkingMemory(
        self, request: memory_pb2.GetWorkingMemoryRequest, context: ServicerContext
    ) -> memory_pb2.WorkingMemory:
        session_id = parse_name(request.name, field="name")
        tenant = self.tenant()
        stamp = _session_stamp(await session_create_time(self.deps.pool, tenant, session_id))
        key = working_memory_key(tenant, session_id)
        # MULTI/EXEC: the values and the TTL come from the same instant.
        async with self.deps.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(key)
            pipe.pttl(key)
            stored, ttl_ms = await pipe.execute()
        return _from_hash(session_id, stored, stamp, now_us=time.time_ns() // 1000, ttl_ms=ttl_ms)

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
        _check_limits(
            pairs, request.remove_keys, violations, max_keys=max_keys, max_bytes=max_bytes
        )
        ttl_ms = (
            _ttl_ms(request.ttl, violations)
            if request.HasField("ttl")
            else self.deps.settings.working_ttl_s * 1000
        )
        violations.raise_if_any()
        assert session_id is not None
        tenant = self.tenant()
        stamp = _session_stamp(await session_create_time(self.deps.pool, tenant, session_id))
        update_us = time.time_ns() // 1000
        refused, *result = await self._update_script(
            keys=[working_memory_key(tenant, session_id)],
            args=[
                stamp,
                update_us,
                ttl_ms,
                max_keys,
                max_bytes,
                len(pairs) // 2,
                *pairs,
                *request.remove_keys,
            ],
        )
        if refused:
            dimension, projected, limit = result
            name = SESSIONS.format(session_id) + _SUFFIX
            raise WorkingMemoryLimitError(name, dimension.decode(), int(projected), int(limit))
        (flat,) = result
        stored = dict(zip(flat[::2], flat[1::2], strict=True))
        return _from_hash(session_id, stored, stamp, now_us=update_us, ttl_ms=ttl_ms)

    @cached_property
    def _update_script(self) -> AsyncScript:
        """The update script, sent by its SHA (EVALSHA) once Redis knows it."""
        return self.deps.redis.register_script(_UPDATE_SCRIPT)
