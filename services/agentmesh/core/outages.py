"""Which unexpected exceptions are not bugs: an outage, an expensive query, bad data.

A servicer does not catch database and cache errors around every query; the
interceptor asks :func:`as_domain_error` instead:

- an outage (a connection lost or refused, a shutdown) is UNAVAILABLE with retry
  advice, the contract's promise and what client and Envoy retry policies act on;
- a statement cancelled for running over its timeout (the connection's
  ``statement_timeout`` or a list's shorter :func:`agentmesh.core.db.query_timeout`)
  is DEADLINE_EXCEEDED (reason ``QUERY_TIMEOUT``): the request's own cost, so nothing
  retries it and Envoy does not eject a healthy replica for it;
- a value PostgreSQL refuses as data (SQLSTATE class 22: out of range, malformed, a
  character the encoding cannot hold) is INVALID_ARGUMENT: validation where input
  enters should have caught it, and this is the last backstop, never INTERNAL.
"""

from __future__ import annotations

from typing import Final

import asyncpg  # type: ignore[import-untyped]
import redis.exceptions

from agentmesh.core.db import PoolBusyError, QueryTimeoutError
from agentmesh.core.errors import DeadlineExceeded, DomainError, InvalidArgument, Unavailable

_POSTGRES_OUTAGES: Final = (
    asyncpg.exceptions.PostgresConnectionError,  # connection lost or refused
    asyncpg.exceptions.OperatorInterventionError,  # shutdown, cannot connect now
)
_REDIS_OUTAGES: Final = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def as_domain_error(exc: BaseException) -> DomainError | None:
    """The error of the contract ``exc`` stands for (see the module docstring), or None
    when it is a bug (INTERNAL)."""
    if isinstance(exc, (asyncpg.exceptions.QueryCanceledError, QueryTimeoutError)):
        return DeadlineExceeded(
            "the query ran longer than this service allows; narrow it (a filter, a"
            " smaller page) and try again",
            reason="QUERY_TIMEOUT",
        )
    if isinstance(exc, asyncpg.exceptions.DataError):
        return InvalidArgument(
            "request", f"a value the database cannot take (SQLSTATE {exc.sqlstate})"
        )
    return as_unavailable(exc)


def as_unavailable(exc: BaseException) -> Unavailable | None:
    """The UNAVAILABLE error ``exc`` stands for, or None when it is not an outage."""
    if isinstance(exc, (asyncpg.exceptions.QueryCanceledError, QueryTimeoutError)):
        return None  # the query's own cost, not an outage (as_domain_error)
    if isinstance(exc, _POSTGRES_OUTAGES):
        return Unavailable(
            "the database is unavailable; retry shortly", reason="DATABASE_UNAVAILABLE"
        )
    if isinstance(exc, _REDIS_OUTAGES):
        return Unavailable("the cache is unavailable; retry shortly", reason="CACHE_UNAVAILABLE")
    if isinstance(exc, PoolBusyError):
        return Unavailable(
            "every database connection of this replica is busy; retry shortly",
            reason="DATABASE_BUSY",
        )
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, TimeoutError)):
        # An established connection dropped mid-call, or a pool acquisition timed out.
        # (Failed connects are turned into Unavailable where they happen: core/db.py.)
        return Unavailable("a dependency is unavailable; retry shortly")
    return None
