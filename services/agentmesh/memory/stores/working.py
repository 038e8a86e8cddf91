"""Storage of working memory: per-session key/value in Redis with a TTL.

One Redis hash per session (``stores.sessions.working_memory_key``): a field per client
key, its value as JSON text. Two reserved fields, named with ``@`` which client keys
cannot contain, are never shown to clients:

- ``@update_time``: when the hash last changed (microseconds since the epoch);
- ``@session``: the create time of the session that wrote it. A session id can be
  deleted and created again; an UpdateWorkingMemory racing a DeleteSession could
  leave a hash behind, and the stamp keeps the new session from inheriting it.

A deleted session's working memory stays in Redis until the session is purged (its own
TTL still runs), so UndeleteSession gives it back: the undeleted session keeps its
create time, hence its stamp.

An update is one Lua script, so merge, removal, TTL and stamps apply atomically in
one round trip. The script also enforces the limits of one working memory (see
``domain/working.py``): it works out what the merge would leave, and when that is over
a limit and larger than what is stored it changes nothing and reports the limit
(``OverLimit``). Checking and writing in one script is what makes the limit hold under
concurrent updates: two merges cannot both fit in the same remaining room.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import redis.asyncio
from redis.commands.core import AsyncScript

from agentmesh.memory.stores.sessions import working_memory_key

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


@dataclass(frozen=True, slots=True)
class WorkingHash:
    """A session's working memory as stored, reserved fields taken out."""

    values: dict[str, bytes]
    """Client key → its value as JSON text."""
    update_us: int
    """When it last changed, in microseconds since the epoch (0: unknown)."""


@dataclass(frozen=True, slots=True)
class OverLimit:
    """An update refused, having changed nothing: it would take the working memory
    over a limit (``dimension``: ``keys`` or ``bytes``)."""

    dimension: str
    projected: int
    limit: int


def _stamp(created: datetime) -> str:
    """The ``@session`` stamp of the session created at ``created``."""
    return created.isoformat()


def _decode(stored: Mapping[bytes, bytes], stamp: str) -> WorkingHash | None:
    """A hash read back from Redis; None when there is none, or it was stamped by an
    earlier session of the same id (it counts as empty)."""
    if not stored or stored.get(_SESSION, b"").decode() != stamp:
        return None
    values = {key.decode(): raw for key, raw in stored.items() if not key.startswith(b"@")}
    return WorkingHash(values, int(stored.get(_UPDATE_TIME, b"0")))


async def read_working_memory(
    redis_client: redis.asyncio.Redis, tenant: str, session_id: str, created: datetime
) -> tuple[WorkingHash | None, int]:
    """The working memory of the tenant's session created at ``created`` (None when it
    has none), and its TTL in milliseconds (as Redis ``PTTL``: negative when none)."""
    key = working_memory_key(tenant, session_id)
    # MULTI/EXEC: the values and the TTL come from the same instant.
    async with redis_client.pipeline(transaction=True) as pipe:
        pipe.hgetall(key)
        pipe.pttl(key)
        stored, ttl_ms = await pipe.execute()
    return _decode(stored, _stamp(created)), ttl_ms


def update_script(redis_client: redis.asyncio.Redis) -> AsyncScript:
    """The merge script on ``redis_client``, registered once per process: it is sent by
    its SHA (EVALSHA) once Redis knows it, and the SHA is computed here, not per call."""
    return redis_client.register_script(_UPDATE_SCRIPT)


async def update_working_memory(
    script: AsyncScript,
    tenant: str,
    session_id: str,
    created: datetime,
    *,
    pairs: Sequence[str],
    remove_keys: Sequence[str],
    update_us: int,
    ttl_ms: int,
    max_keys: int,
    max_bytes: int,
) -> WorkingHash | OverLimit:
    """Merges the flat key/JSON ``pairs`` into the working memory of the tenant's session
    created at ``created``, removes ``remove_keys``, stamps it ``update_us`` and sets its
    TTL, atomically, with ``script`` (:func:`update_script`); or changes nothing when
    that would go over a limit."""
    stamp = _stamp(created)
    refused, *result = await script(
        keys=[working_memory_key(tenant, session_id)],
        args=[
            stamp,
            update_us,
            ttl_ms,
            max_keys,
            max_bytes,
            len(pairs) // 2,
            *pairs,
            *remove_keys,
        ],
    )
    if refused:
        dimension, projected, limit = result
        return OverLimit(dimension.decode(), int(projected), int(limit))
    (flat,) = result
    stored = dict(zip(flat[::2], flat[1::2], strict=True))
    updated = _decode(stored, stamp)
    assert updated is not None  # the script stamped it
    return updated
