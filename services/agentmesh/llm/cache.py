"""An optional response cache of chat models in Redis, as LangChain's ``BaseCache``.

Keyed by LangChain's own (prompt, model string): the messages, the model and its
parameters. A hit answers without calling the provider. Entries expire after
``AGENTMESH_LLM_CACHE_TTL_S``; answers larger than ``MAX_ENTRY_BYTES`` are not kept.

Stored as plain JSON (text, message content, tool calls), rebuilt into LangChain
messages field by field: nothing read back is revived as code, and an entry that does
not have the expected shape is a miss. Token usage is not replayed: a hit spends no
tokens. Only the async path is served (the agents call models with ``ainvoke``); the
sync one is always a miss.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, Final

import redis.asyncio
from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation
from prometheus_client import Counter

KEY_PREFIX: Final = "agentmesh:llm-cache:"
MAX_ENTRY_BYTES: Final = 256 * 1024

LOOKUPS: Final = Counter(
    "agentmesh_llm_cache_lookups_total", "LLM response cache lookups by result.", ("result",)
)


def _encode(generations: Sequence[Generation]) -> str | None:
    items: list[dict[str, Any]] = []
    for generation in generations:
        if not isinstance(generation, ChatGeneration) or not isinstance(
            generation.message, AIMessage
        ):
            return None  # only chat answers are kept
        message = generation.message
        items.append(
            {
                "content": message.content,
                "tool_calls": [
                    {"name": c["name"], "args": c["args"], "id": c.get("id")}
                    for c in message.tool_calls
                ],
            }
        )
    text = json.dumps(items, separators=(",", ":"))
    return text if len(text.encode()) <= MAX_ENTRY_BYTES else None


def _decode(raw: bytes | str) -> list[Generation] | None:
    try:
        items = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(items, list) or not items:
        return None
    generations: list[Generation] = []
    for item in items:
        if not isinstance(item, dict):
            return None
        content = item.get("content")
        calls = item.get("tool_calls")
        if not isinstance(content, str | list) or not isinstance(calls, list):
            return None
        tool_calls = []
        for call in calls:
            if not (
                isinstance(call, dict)
                and isinstance(call.get("name"), str)
                and isinstance(call.get("args"), dict)
            ):
                return None
            tool_calls.append(
                {
                    "name": call["name"],
                    "args": call["args"],
                    "id": call.get("id"),
                    "type": "tool_call",
                }
            )
        message = AIMessage(content=content, tool_calls=tool_calls)
        generations.append(ChatGeneration(message=message))
    return generations


class RedisResponseCache(BaseCache):
    """Chat answers in Redis for ``ttl_s`` seconds."""

    def __init__(self, client: redis.asyncio.Redis, *, ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s

    @staticmethod
    def _key(prompt: str, llm_string: str) -> str:
        digest = hashlib.sha256(f"{llm_string}\x00{prompt}".encode()).hexdigest()
        return KEY_PREFIX + digest

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        return None  # the sync path is not cached (see the module docstring)

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        return None

    def clear(self, **kwargs: Any) -> None:
        return None

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        raw = await self._redis.get(self._key(prompt, llm_string))
        found = _decode(raw) if raw is not None else None
        LOOKUPS.labels("hit" if found is not None else "miss").inc()
        return found

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        encoded = _encode(return_val)
        if encoded is not None:
            await self._redis.set(self._key(prompt, llm_string), encoded, ex=self._ttl_s)

    async def aclear(self, **kwargs: Any) -> None:
        async for key in self._redis.scan_iter(match=KEY_PREFIX + "*", count=500):
            await self._redis.delete(key)
