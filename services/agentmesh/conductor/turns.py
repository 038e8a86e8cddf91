"""A conversation turn: started once per request (a retried ``request_id`` finds the
turn it started), then run to its end in a task of its own, so it goes on when the
client leaves.

The task stores each event as it is produced (``stores/conversations.py``: the
session's next sequence), then announces it (``core/changes.py``); the client's
stream, a retry's replay and WatchConversation all read the events from the table
(``watch.py``). What the turn does is ``steps.py``'s (routing, the agents' runs and
their hand-offs, or a background turn's Job); this module ends it with one ending
event: ``final`` (the answer appended to Memory), ``interrupt`` (the session pauses
until a resume) or ``error``.

A busy session (``domain/turns.py`` ``on_busy``): a queued turn waits in a task of the
replica that took it, woken by the session's change notifications, until it heads the
queue and nothing runs; then it runs like any turn. A turn stopped by a newer message
(busy policy INTERRUPT) gets its ending event and its STOPPED state from the replica
that stopped it, in the same transaction that starts the newer turn; the task running
it, on whichever replica, learns it from the same change notification (or its next
event, which the store refuses) and cancels its agent run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]
import grpc
import structlog
from google.rpc import code_pb2, status_pb2

from agentmesh.conductor.domain.turns import (
    Admission,
    Conversation,
    Resumption,
    TurnState,
    admit,
    expired,
    may_start_queued,
    on_busy,
    queue_claim_s,
    thread_id,
)
from agentmesh.conductor.downstream import Downstream
from agentmesh.conductor.settings import ConductorSettings
from agentmesh.conductor.steps import Reviewer, TurnSteps, routing_of
from agentmesh.conductor.stores.conversations import (
    NewTurn,
    Paused,
    append_event,
    close_turn,
    end_turn,
    enqueue_turn,
    find_turn,
    keep_queued,
    lapsed_queued,
    lock_conversation,
    queue_of,
    start_queued,
    start_turn,
    turn_state,
)
from agentmesh.conductor.turn_model import Outcome, Route, TurnRequest, status_of
from agentmesh.core.changes import ChangeFeed, Topic
from agentmesh.core.context import current_authorization
from agentmesh.core.errors import Aborted, DomainError, InvalidArgument
from agentmesh.core.idempotency import REUSED_FOR_ANOTHER_REQUEST
from agentmesh.core.names import SESSIONS
from agentmesh.core.tasks import stop_task
from agentmesh.v1 import conductor_pb2, job_pb2

_log = structlog.get_logger("agentmesh.conductor.turns")

STOP_TURN_S: Final = 60.0
"""Longest a stopped turn's run is cancelled again and again before it is left be."""
CONVERSATION_CHANGES: Final = Topic("agentmesh:conductor:changed:", "conversation")
"""Where a stored event of a session is announced (its sequence), keyed by session id."""


@dataclass(frozen=True)
class Started:
    """The turn a Converse call follows; ``task`` runs it here (None: a replay)."""

    turn_id: str
    task: asyncio.Task[None] | None


class _StoppedError(Exception):
    """The turn no longer runs: a newer message stopped it (busy policy INTERRUPT)."""


def _conversation(row: asyncpg.Record, queued_turns: int) -> Conversation:
    return Conversation(
        running_turn=row["running_turn"],
        running_expired=expired(row["running_expire_time"], row["now"]),
        paused_turn=row["paused_turn"],
        paused_interrupt_id=row["paused_interrupt_id"],
        paused_agent=row["paused_agent"],
        paused_thread_id=row["paused_thread_id"],
        queued_turns=queued_turns,
    )


async def _earlier(
    db: asyncpg.Pool | asyncpg.Connection,
    tenant: str,
    request: TurnRequest,
    *,
    queued: bool = True,
) -> Started | None:
    """The turn ``request``'s ``request_id`` started before (``queued``: also a queued
    one), to replay; INVALID_ARGUMENT when the id was used for another request."""
    if request.request_id is None:
        return None
    earlier = await find_turn(db, tenant, request.session_id, request.request_id)
    if earlier is None or (not queued and TurnState(earlier["state"]) is TurnState.QUEUED):
        return None
    if bytes(earlier["fingerprint"]) != request.fingerprint:
        raise InvalidArgument("request_id", REUSED_FOR_ANOTHER_REQUEST)
    return Started(earlier["id"], None)


class TurnRunner:
    """Starts turns and keeps the tasks that run them (awaited or cancelled at stop)."""

    def __init__(
        self,
        settings: ConductorSettings,
        pool: asyncpg.Pool,
        redis: Any,
        downstream: Downstream,
        changes: ChangeFeed,
        reviewer: Reviewer | None = None,
    ) -> None:
        self._settings = settings
        self._reviewer = reviewer
        """Reviews supervised turns' answers (the router), None: no reviews."""
        self._pool = pool
        self._redis = redis
        self._downstream = downstream
        self._changes = changes
        self._tasks: set[asyncio.Task[None]] = set()
        self._jobs: dict[str, str] = {}
        """The job of each background turn running here, by turn id."""

    async def replay(self, tenant: str, request: TurnRequest) -> Started | None:
        """The turn a retried ``request_id`` started before, to replay without routing
        the message again; None for a new request (and for a queued turn, which
        :meth:`start` checks under the session's lock: its replica may be gone).
        INVALID_ARGUMENT when the id was used for another request."""
        return await _earlier(self._pool, tenant, request, queued=False)

    async def start(self, tenant: str, request: TurnRequest, route: Route | None) -> Started:
        """Starts the turn ``request`` asks for (``route``: who takes a new turn; None
        for a resume), or finds the turn its ``request_id`` started before."""
        session_id = request.session_id
        session = SESSIONS.format(session_id)
        announce: list[int] = []
        async with self._pool.acquire() as conn, conn.transaction():
            row = await lock_conversation(conn, tenant, session_id)
            announce += await self._drop_lapsed(conn, tenant, session_id)
            earlier = await _earlier(conn, tenant, request)
            if earlier is not None:
                # A lapsed turn ended above is announced to nobody: the streams of a
                # dead replica are gone, and this replay reads the table.
                return earlier
            queued, _ = await queue_of(conn, tenant, session_id)
            conversation = _conversation(row, queued)
            admission = on_busy(
                session, conversation, request.busy_policy, resume=request.resume is not None
            )
            turn_id = "t" + uuid.uuid4().hex
            if admission is Admission.INTERRUPT:
                assert conversation.running_turn is not None
                announce.append(await self._stop(conn, tenant, session_id, conversation, turn_id))
                conversation = dataclasses.replace(conversation, running_turn=None)
            resumption = None
            if admission is not Admission.ENQUEUE:
                resumption = admit(
                    session,
                    conversation,
                    resume_interrupt_id=request.resume.interrupt_id if request.resume else None,
                )
            if resumption is not None:
                agent_id, thread = resumption.agent_id, resumption.thread_id
            else:
                assert route is not None
                agent_id, thread = route.agent_id, thread_id(session_id, route.agent_id)
            new = NewTurn(
                turn_id=turn_id,
                request_id=request.request_id,
                fingerprint=request.fingerprint,
                agent_id=agent_id,
                thread_id=thread,
                resumes=resumption.paused_turn if resumption else None,
            )
            first: conductor_pb2.ConverseEvent | None = None
            if admission is Admission.ENQUEUE:
                claim_s = queue_claim_s(self._settings.watch_poll_s)
                await enqueue_turn(conn, tenant, session_id, new, claim_s=claim_s)
                ahead = queued + (1 if conversation.running else 0)
                first = conductor_pb2.ConverseEvent(
                    turn_id=turn_id, queued=conductor_pb2.TurnQueued(ahead=ahead)
                )
            else:
                await start_turn(
                    conn, tenant, session_id, new, claim_s=self._settings.turn_timeout_s
                )
                if route is not None and resumption is None:
                    # The routing event with the turn's start: the client hears who
                    # takes the turn without waiting for Memory.
                    first = conductor_pb2.ConverseEvent(
                        turn_id=turn_id, routing=routing_of(route, turn_id)
                    )
            if first is not None:
                stored = await append_event(
                    conn, tenant, session_id, turn_id, first.SerializeToString()
                )
                assert stored is not None  # the turn was just stored QUEUED or RUNNING
                announce.append(stored["sequence"])
        for sequence in announce:
            await self._announce(tenant, session_id, sequence)
        if admission is Admission.ENQUEUE:
            work = self._wait_then_run(tenant, request, turn_id, agent_id, thread, route)
        else:
            work = self._run(
                tenant,
                request,
                turn_id,
                agent_id,
                thread,
                route,
                resumption,
                routed=first is not None,
            )
        task = asyncio.create_task(work, name=f"turn-{turn_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return Started(turn_id, task)

    async def stop(self) -> None:
        """Cancels the turns still running (each ends with an error event)."""
        for task in list(self._tasks):
            task.cancel()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _stop(
        self,
        conn: asyncpg.Connection,
        tenant: str,
        session_id: str,
        conversation: Conversation,
        by_turn: str,
    ) -> int:
        """Ends the running turn for ``by_turn`` (busy policy INTERRUPT): its ending
        event, then STOPPED; returns the event's sequence. Under the conversation lock."""
        stopped = conversation.running_turn
        assert stopped is not None
        error = Aborted(
            "TURN_INTERRUPTED",
            f"turn {stopped} was stopped: turn {by_turn} interrupted it (busy policy INTERRUPT)",
        )
        event = conductor_pb2.ConverseEvent(turn_id=stopped, error=status_of(error))
        stored = await append_event(conn, tenant, session_id, stopped, event.SerializeToString())
        await close_turn(
            conn, tenant, session_id, stopped, TurnState.STOPPED, was=TurnState.RUNNING
        )
        return int(stored["sequence"]) if stored is not None else 0

    async def _drop_lapsed(
        self, conn: asyncpg.Connection, tenant: str, session_id: str
    ) -> list[int]:
        """Ends the session's queued turns whose replica stopped keeping their places
        (an UNAVAILABLE error event, FAILED), so a retry of one replays its end instead
        of waiting; returns the events' sequences. Under the conversation lock."""
        sequences: list[int] = []
        for lapsed in await lapsed_queued(conn, tenant, session_id):
            error = status_pb2.Status(
                code=code_pb2.UNAVAILABLE,
                message="the Conductor replica that queued the turn stopped; send the"
                " message again",
            )
            event = conductor_pb2.ConverseEvent(turn_id=lapsed, error=error)
            stored = await append_event(conn, tenant, session_id, lapsed, event.SerializeToString())
            await close_turn(
                conn, tenant, session_id, lapsed, TurnState.FAILED, was=TurnState.QUEUED
            )
            if stored is not None:
                sequences.append(int(stored["sequence"]))
        return sequences

    async def _announce(self, tenant: str, session_id: str, sequence: int) -> None:
        """Wakes the session's streams and waiting turns, here and on other replicas."""
        self._changes.notify_local(tenant, session_id)
        await CONVERSATION_CHANGES.publish(self._redis, tenant, session_id, sequence)

    # -- waiting in the queue ------------------------------------------------------------

    async def _wait_then_run(
        self,
        tenant: str,
        request: TurnRequest,
        turn_id: str,
        agent_id: str,
        thread: str,
        route: Route | None,
    ) -> None:
        """Waits until queued turn ``turn_id`` heads the session's queue with nothing
        running, then runs it; ends it with an error event when the session is paused
        then, or when the Conductor stops first."""
        session_id = request.session_id
        try:
            refused = await self._wait_turn(tenant, session_id, turn_id)
        except asyncio.CancelledError:
            await asyncio.shield(self._drop_queued(tenant, session_id, turn_id, None))
            raise
        except Exception as exc:
            _log.exception("queued turn lost", turn_id=turn_id)
            await self._drop_queued(tenant, session_id, turn_id, status_of(exc))
            return
        if refused is not None:
            await self._drop_queued(tenant, session_id, turn_id, refused)
            return
        await self._run(tenant, request, turn_id, agent_id, thread, route, None)

    async def _wait_turn(
        self, tenant: str, session_id: str, turn_id: str
    ) -> status_pb2.Status | None:
        """Waits for queued turn ``turn_id``'s time and makes it RUNNING; or the error it
        ends with instead (the session is paused on an interrupt)."""
        poll_s = self._settings.watch_poll_s
        claim_s = queue_claim_s(poll_s)
        session = SESSIONS.format(session_id)
        async with self._changes.subscription(tenant, session_id) as changed:
            while True:
                changed.clear()
                async with self._pool.acquire() as conn, conn.transaction():
                    row = await lock_conversation(conn, tenant, session_id)
                    state = await keep_queued(conn, tenant, session_id, turn_id, claim_s=claim_s)
                    if state is not TurnState.QUEUED:
                        raise RuntimeError(f"queued turn {turn_id} is {state!r}")
                    queued, head = await queue_of(conn, tenant, session_id)
                    conversation = _conversation(row, queued)
                    if may_start_queued(conversation, turn_id, head):
                        try:
                            admit(session, conversation, resume_interrupt_id=None)
                        except DomainError as exc:
                            return status_of(exc)
                        await start_queued(
                            conn,
                            tenant,
                            session_id,
                            turn_id,
                            claim_s=self._settings.turn_timeout_s,
                        )
                        return None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(poll_s):
                        await changed.wait()

    async def _drop_queued(
        self, tenant: str, session_id: str, turn_id: str, error: status_pb2.Status | None
    ) -> None:
        """Ends a queued turn that will not run with ``error`` (None: the Conductor
        stopped) and FAILED, and wakes the turns queued after it."""
        if error is None:
            error = status_pb2.Status(
                code=code_pb2.UNAVAILABLE,
                message="the Conductor stopped while the turn waited; send the message again",
            )
        event = conductor_pb2.ConverseEvent(turn_id=turn_id, error=error)
        try:
            stored = await append_event(
                self._pool, tenant, session_id, turn_id, event.SerializeToString()
            )
            await close_turn(
                self._pool, tenant, session_id, turn_id, TurnState.FAILED, was=TurnState.QUEUED
            )
            await self._announce(tenant, session_id, stored["sequence"] if stored else 0)
        except Exception:  # its place lapses after the queue claim
            _log.exception("queued turn end not stored", turn_id=turn_id)

    # -- running a turn ----------------------------------------------------------------

    async def _emit(
        self, tenant: str, session_id: str, turn_id: str, event: conductor_pb2.ConverseEvent
    ) -> None:
        row = await append_event(self._pool, tenant, session_id, turn_id, event.SerializeToString())
        if row is None:
            raise _StoppedError(turn_id)
        await self._announce(tenant, session_id, row["sequence"])

    async def _watch_stop(
        self,
        tenant: str,
        session_id: str,
        turn_id: str,
        steps: asyncio.Task[Outcome],
        stopped: asyncio.Event,
    ) -> None:
        """Cancels ``steps`` (the agent's run) once a newer turn stopped ``turn_id``: checked
        on every change notification of the session, and every poll."""
        async with self._changes.subscription(tenant, session_id) as changed:
            while not steps.done():
                changed.clear()
                try:
                    state = await turn_state(self._pool, tenant, session_id, turn_id)
                except Exception:  # checked again at the next change or poll
                    _log.warning("turn state not read", turn_id=turn_id, exc_info=True)
                    state = TurnState.RUNNING
                if state is TurnState.STOPPED:
                    stopped.set()
                    # Cancelled again until it ends: a cancellation that lands as a
                    # stream's message arrives can be lost in the call it interrupts.
                    await stop_task(steps, what=f"turn {turn_id}", timeout_s=STOP_TURN_S)
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._settings.watch_poll_s):
                        await changed.wait()

    async def _run(
        self,
        tenant: str,
        request: TurnRequest,
        turn_id: str,
        agent_id: str,
        thread: str,
        route: Route | None,
        resumption: Resumption | None,
        *,
        routed: bool = False,
    ) -> None:
        """Runs the turn in this task to its ending event (``routed``: its routing event
        was stored as it started)."""
        session_id = request.session_id

        async def emit(**event: Any) -> None:
            await self._emit(
                tenant, session_id, turn_id, conductor_pb2.ConverseEvent(turn_id=turn_id, **event)
            )

        state, paused = TurnState.FAILED, None
        stopped = asyncio.Event()
        turn = TurnSteps(
            self._settings,
            self._downstream,
            emit,
            tenant,
            request,
            turn_id,
            on_job=lambda job: self._jobs.__setitem__(turn_id, job),
            reviewer=self._reviewer,
        )
        steps = asyncio.create_task(
            turn.run(agent_id, thread, route, resumption, routed=routed),
            name=f"turn-steps-{turn_id}",
        )
        watch = asyncio.create_task(
            self._watch_stop(tenant, session_id, turn_id, steps, stopped),
            name=f"turn-watch-{turn_id}",
        )
        try:
            async with asyncio.timeout(self._settings.turn_timeout_s):
                outcome = await steps
            state, paused = await self._tell(turn, outcome, emit)
        except _StoppedError:
            await self._cancel_job(turn_id)
            return  # the turn that stopped it ended it
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if stopped.is_set() and current is not None and not current.cancelling():
                await self._cancel_job(turn_id)
                return  # the turn that stopped it ended it
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    emit(
                        error=status_pb2.Status(
                            code=code_pb2.UNAVAILABLE,
                            message="the Conductor stopped during the turn; send the message again",
                        )
                    )
                )
            await asyncio.shield(self._end(tenant, session_id, turn_id, state, None))
            raise
        except Exception as exc:
            if not isinstance(exc, DomainError | grpc.aio.AioRpcError | TimeoutError):
                _log.exception("turn failed", turn_id=turn_id)
            try:
                await emit(error=status_of(exc))
            except _StoppedError:
                await self._cancel_job(turn_id)
                return
            except Exception:
                _log.exception("turn error not stored", turn_id=turn_id)
        finally:
            self._jobs.pop(turn_id, None)
            watch.cancel()
            if not steps.done():
                steps.cancel()
        await self._end(tenant, session_id, turn_id, state, paused)

    @staticmethod
    async def _tell(
        turn: TurnSteps, outcome: Outcome, emit: Any
    ) -> tuple[TurnState, Paused | None]:
        """Stores the event that ends the turn as ``outcome`` says; the turn's state."""
        if outcome.interrupt is not None:
            await turn.pause(outcome)
            await emit(interrupt=outcome.interrupt)
            return TurnState.INTERRUPTED, Paused(
                outcome.interrupt.id, outcome.agent_id, outcome.thread
            )
        if outcome.error is not None:
            await emit(error=outcome.error)
            return TurnState.FAILED, None
        assert outcome.result is not None
        await emit(final=await turn.answer(outcome))
        return TurnState.COMPLETED, None

    async def _cancel_job(self, turn_id: str) -> None:
        """Cancels the job of background turn ``turn_id``, stopped by a newer message
        (a turn that ends otherwise leaves its job alone: the client may watch it)."""
        job = self._jobs.get(turn_id)
        if job is None or self._downstream.jobs is None:
            return
        try:
            await self._downstream.jobs.CancelJob(
                job_pb2.CancelJobRequest(
                    name=job, reason=f"turn {turn_id} was interrupted by a newer message"
                ),
                metadata=(("authorization", current_authorization() or ""),),
                timeout=self._settings.routing_timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            _log.warning("job of an interrupted turn not cancelled", job=job, code=exc.code().name)

    async def _end(
        self,
        tenant: str,
        session_id: str,
        turn_id: str,
        state: TurnState,
        paused: Paused | None,
    ) -> None:
        try:
            await end_turn(self._pool, tenant, session_id, turn_id, state, paused)
        except Exception:  # the claim then lapses after the turn timeout
            _log.exception("turn end not stored", turn_id=turn_id)
            return
        await self._announce(tenant, session_id, 0)  # wakes the turns queued after it
