"""The asyncpg connection pool, with the pgvector codec on every connection.

The pool connects at start (``db_pool_min_size`` connections), so a wrong URL or
credentials fail the process at once. Afterwards asyncpg reconnects by itself.

List and search RPCs run inside :func:`query_timeout`: their ``fetch`` queries are
cancelled after ``db_list_statement_timeout_ms`` (:class:`QueryTimeoutError`, answered
DEADLINE_EXCEEDED like a statement over the general ``statement_timeout``), without a
``SET`` round trip per call.

A call waits at most ``db_acquire_timeout_ms`` for a pooled connection: when every
connection is busy, the call answers UNAVAILABLE (``DATABASE_BUSY``, with retry
advice) instead of queueing until its own deadline. UNAVAILABLE rather than
RESOURCE_EXHAUSTED: the replica is saturated, not the caller over a quota, and an
idempotent call retried by Envoy lands on another replica that may have room.

The health probe (:class:`DatabaseProbe`) has a connection of its own, outside the
pool: a pool busy with slow queries is a loaded service, not a down one, and must not
turn it NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any, Final

# asyncpg ships neither type hints nor a py.typed marker.
import asyncpg  # type: ignore[import-untyped]
from pgvector.asyncpg import register_vector

from agentmesh.core.errors import Unavailable
from agentmesh.core.settings import ConfigError, Settings

_PROBE_CONNECT_TIMEOUT_S: Final = 5.0


class PoolBusyError(TimeoutError):
    """No pooled connection came free within the acquire timeout."""


class QueryTimeoutError(TimeoutError):
    """A query ran past the :func:`query_timeout` of its call and was cancelled."""


_query_timeout_s: ContextVar[float | None] = ContextVar("agentmesh_query_timeout", default=None)


@contextlib.contextmanager
def query_timeout(timeout_ms: int) -> Iterator[None]:
    """Within this block (one RPC), every ``fetch`` on a pooled connection is cancelled
    after ``timeout_ms`` (0: no limit beyond the connection's ``statement_timeout``)."""
    token = _query_timeout_s.set(timeout_ms / 1000 if timeout_ms > 0 else None)
    try:
        yield
    finally:
        _query_timeout_s.reset(token)


class _Connection(asyncpg.Connection):  # type: ignore[misc]  # asyncpg is untyped
    """asyncpg's connection whose ``fetch`` honours the call's :func:`query_timeout`:
    asyncpg cancels the statement on the server when the timeout passes."""

    async def fetch(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,  # noqa: ASYNC109  # asyncpg's own signature
        **kw: Any,
    ) -> Any:
        limit = _query_timeout_s.get() if timeout is None else timeout
        if limit is None:
            return await super().fetch(query, *args, **kw)
        try:
            return await super().fetch(query, *args, timeout=limit, **kw)
        except TimeoutError as exc:
            raise QueryTimeoutError(f"query cancelled after {limit:g} s") from exc


class _Pool(asyncpg.Pool):  # type: ignore[misc]  # asyncpg is untyped
    """asyncpg's pool whose acquisitions wait at most ``acquire_timeout_s`` unless the
    caller says otherwise; every ``pool.fetch*``/``execute`` goes through ``acquire``."""

    def __init__(self, *args: Any, acquire_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acquire_timeout_s = acquire_timeout_s

    def acquire(self, *, timeout: float | None = None) -> _Acquire:
        limit = self._acquire_timeout_s if timeout is None else timeout
        return _Acquire(super().acquire(timeout=limit))


class _Acquire:
    """asyncpg's acquisition (``async with`` or ``await``), its timeout raised as
    :class:`PoolBusyError`: told apart from any other timeout, it maps to UNAVAILABLE
    ``DATABASE_BUSY``."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def __aenter__(self) -> Any:
        try:
            return await self._inner.__aenter__()
        except TimeoutError as exc:
            raise PoolBusyError("no pooled connection came free in time") from exc

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self._inner.__aexit__(*exc_info)

    def __await__(self) -> Any:
        return self._acquired().__await__()

    async def _acquired(self) -> Any:
        try:
            return await self._inner
        except TimeoutError as exc:
            raise PoolBusyError("no pooled connection came free in time") from exc


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
    return await _Pool(
        settings.database_url,
        acquire_timeout_s=settings.db_acquire_timeout_ms / 1000,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        init=_init_connection,
        connect=_connect,
        reset=_keep_session_state,
        loop=None,
        connection_class=_Connection,
        record_class=asyncpg.Record,
        server_settings={
            "application_name": f"agentmesh-{settings.service}",
            "statement_timeout": str(settings.db_statement_timeout_ms),
            # Service-specific session defaults (e.g. pgvector's hnsw.* settings).
            **(server_settings or {}),
        },
    )


class DatabaseProbe:
    """The database health probe: ``SELECT 1`` on a connection of its own (see the
    module docstring), opened on first use and again after any failure."""

    def __init__(self, settings: Settings) -> None:
        settings.require("database_url")
        self._settings = settings
        self._connection: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()

    async def __call__(self) -> None:
        """One round trip; raises when the database cannot answer."""
        async with self._lock:
            try:
                if self._connection is None or self._connection.is_closed():
                    self._connection = await _connect(
                        self._settings.database_url,
                        timeout=_PROBE_CONNECT_TIMEOUT_S,
                        server_settings={
                            "application_name": f"agentmesh-{self._settings.service}-health"
                        },
                    )
                await self._connection.fetchval("SELECT 1")
            except BaseException:
                # Cancelled by the probe's timeout or failed: a connection in an unknown
                # state is dropped, the next probe opens a fresh one.
                self._drop()
                raise

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.terminate()
            self._connection = None

    async def close(self) -> None:
        """Closes the probe's connection (at shutdown)."""
        async with self._lock:
            if self._connection is not None:
                with contextlib.suppress(Exception):
                    await self._connection.close(timeout=2)
                self._drop()
