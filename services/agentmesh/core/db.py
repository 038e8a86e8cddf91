"""The asyncpg connection pool, with the pgvector codec on every connection.

The pool connects at start (``db_pool_min_size`` connections), so a wrong URL or
credentials fail the process at once. Afterwards asyncpg reconnects by itself;
:func:`ping_pool` is the health probe that reports the database while it is away.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# asyncpg ships neither type hints nor a py.typed marker.
import asyncpg  # type: ignore[import-untyped]
from pgvector.asyncpg import register_vector

from agentmesh.core.errors import Unavailable
from agentmesh.core.settings import ConfigError, Settings


async def _init_connection(connection: asyncpg.Connection) -> None:
    """Register the pgvector codec; the extension comes from the migrations."""
    try:
        await register_vector(connection)
    except ValueError as exc:  # asyncpg: "unknown type: public.vector"
        raise ConfigError(
            "the database has no pgvector type; run the migrations "
            "(CREATE EXTENSION vector) before starting the service"
        ) from exc


async def _connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    """asyncpg's connect, with "cannot reach the server" turned into ``Unavailable``.

    A refused or missing socket surfaces from asyncpg as a bare ``OSError`` (e.g.
    ``FileNotFoundError`` for a unix socket that is gone while PostgreSQL is down),
    indistinguishable from a bug by the time it reaches the interceptor. Raised here,
    it is an outage: UNAVAILABLE with retry advice, as the contract promises.
    """
    try:
        return await asyncpg.connect(*args, **kwargs)
    except OSError as exc:
        raise Unavailable(
            "the database is unavailable; retry shortly", reason="DATABASE_UNAVAILABLE"
        ) from exc


async def _keep_session_state(connection: asyncpg.Connection) -> None:
    """Pool reset that sends nothing to the server.

    asyncpg's default runs ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL`` on every release: one more round trip per RPC. Our code keeps no
    session state (``SET LOCAL`` and transaction-scoped advisory locks only, no
    LISTEN, no cursors outside transactions), and asyncpg still rolls back a
    transaction left open and clears its own state before calling this. Session
    settings given to ``create_pool`` stay, as intended.
    """


async def create_pool(
    settings: Settings, *, server_settings: Mapping[str, str] | None = None
) -> asyncpg.Pool:
    """Open the pool for ``settings.database_url`` (required).

    Unix sockets work through the URL query: ``postgresql://postgres@/db?host=/run/pg``.
    Every connection gets ``statement_timeout`` (``db_statement_timeout_ms``) so a
    runaway query cannot hold a connection forever, and the service name as
    ``application_name`` for ``pg_stat_activity``.
    """
    settings.require("database_url")
    return await asyncpg.create_pool(
        dsn=settings.database_url,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        init=_init_connection,
        connect=_connect,
        reset=_keep_session_state,
        server_settings={
            "application_name": f"agentmesh-{settings.service}",
            "statement_timeout": str(settings.db_statement_timeout_ms),
            # Service-specific session defaults (e.g. pgvector's hnsw.* settings).
            **(server_settings or {}),
        },
    )


async def ping_pool(pool: asyncpg.Pool) -> None:
    """Health probe: one round trip on a pooled connection; raises when unreachable."""
    await pool.fetchval("SELECT 1")
