"""The asyncio Redis client (working memory, Dramatiq broker side) and its health probe."""

from __future__ import annotations

from typing import Final

import redis.asyncio

from agentmesh.core.settings import Settings

# Bounded waits: a Redis that stops answering must fail calls (and the health probe),
# not hang them until the client's deadline.
_CONNECT_TIMEOUT_S: Final = 2.0
_SOCKET_TIMEOUT_S: Final = 5.0


def create_redis(settings: Settings) -> redis.asyncio.Redis:
    """A client for ``settings.redis_url`` (required); connects lazily on first command."""
    settings.require("redis_url")
    assert settings.redis_url is not None
    return redis.asyncio.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=_CONNECT_TIMEOUT_S,
        socket_timeout=_SOCKET_TIMEOUT_S,
        # Revalidate connections that sat idle, so the first command after a Redis
        # restart does not fail on a dead socket.
        health_check_interval=30,
        client_name=f"agentmesh-{settings.service}",
    )


async def ping_redis(client: redis.asyncio.Redis) -> None:
    """Health probe: PING; raises when Redis does not answer."""
    await client.ping()
