"""Reading a session's stored events as a stream: what the client missed, then live
ones as turns store them, woken by the session's change notification
(``core/changes.py``) and reading again at least every
``AGENTMESH_CONDUCTOR_WATCH_POLL_S`` in case a notification was lost.

Converse follows its own turn this way until the turn's ending event (a retry with the
same ``request_id`` does the same, from the start of the turn); WatchConversation
follows the whole session until the client leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Final

import asyncpg  # type: ignore[import-untyped]

from agentmesh.conductor.domain.turns import ENDING_EVENTS
from agentmesh.conductor.stores.conversations import list_events
from agentmesh.core.changes import ChangeFeed
from agentmesh.core.errors import Unavailable
from agentmesh.core.names import SESSIONS
from agentmesh.v1 import conductor_pb2

BATCH: Final = 100
"""Events read at once while catching up."""


def _event(row: asyncpg.Record, session: str) -> conductor_pb2.ConverseEvent:
    event = conductor_pb2.ConverseEvent.FromString(bytes(row["event"]))
    event.session = session
    event.sequence = row["sequence"]
    event.turn_id = row["turn_id"]
    event.time.FromDatetime(row["time"])
    return event


async def follow(
    pool: asyncpg.Pool,
    changes: ChangeFeed,
    tenant: str,
    session_id: str,
    *,
    after: int,
    poll_s: float,
    turn_id: str | None = None,
    runner: asyncio.Task[None] | None = None,
) -> AsyncIterator[conductor_pb2.ConverseEvent]:
    """The tenant's session's events after sequence ``after``, stored ones first, then
    live ones. With ``turn_id``: only that turn's, until its ending event; ``runner`` is
    the task running it in this process, if any (when it ends without storing an ending
    event, UNAVAILABLE instead of waiting for ever)."""
    session = SESSIONS.format(session_id)
    async with changes.subscription(tenant, session_id) as changed:
        last = after
        while True:
            changed.clear()  # before reading: an event from now on wakes us again
            finished = runner is not None and runner.done()
            rows = await list_events(
                pool, tenant, session_id, after=last, limit=BATCH, turn_id=turn_id
            )
            for row in rows:
                event = _event(row, session)
                yield event
                last = event.sequence
                if turn_id is not None and event.WhichOneof("event") in ENDING_EVENTS:
                    return
            if rows:
                continue
            if finished:
                raise Unavailable(
                    f"turn {turn_id} of {session} stopped before it stored its end; watch"
                    " the session, or send the message again",
                    reason="TURN_LOST",
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll_s):
                    await changed.wait()
