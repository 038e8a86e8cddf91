"""Which unexpected exceptions mean "a dependency is down" rather than "a bug".

A servicer does not catch connection errors of PostgreSQL or Redis around every
query; the interceptor asks :func:`as_unavailable` instead, so an outage reaches
the client as UNAVAILABLE with retry advice (the contract's promise, and what
client and Envoy retry policies act on) and never as INTERNAL.
"""

from __future__ import annotations

from typing import Final

import asyncpg  # type: ignore[import-untyped]
import redis.exceptions

from agentmesh.core.errors import Unavailable

_POSTGRES_OUTAGES: Final = (
    asyncpg.exceptions.PostgresConnectionError,  # connection lost or refused
    asyncpg.exceptions.OperatorInterventionError,  # shutdown, cannot connect now
)
_REDIS_OUTAGES: Final = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def as_unavailable(exc: BaseException) -> Unavailable | None:
    """The UNAVAILABLE error ``exc`` stands for, or None when it is not an outage."""
    if isinstance(exc, _POSTGRES_OUTAGES):
        return Unavailable(
            "the database is unavailable; retry shortly", reason="DATABASE_UNAVAILABLE"
        )
    if isinstance(exc, _REDIS_OUTAGES):
        return Unavailable("the cache is unavailable; retry shortly", reason="CACHE_UNAVAILABLE")
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, TimeoutError)):
        # An established connection dropped mid-call, or a pool acquisition timed out.
        # (Failed connects are turned into Unavailable where they happen: core/db.py.)
        return Unavailable("a dependency is unavailable; retry shortly")
    return None
