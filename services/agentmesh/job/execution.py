"""Running one attempt of a job on a worker: claim it, drive the agent, keep the lease,
write progress, and end the attempt with exactly one guarded change.

The attempt runs as two tasks. The **run** streams the agent (``StreamAgent``, or
``ResumeAgent`` with the human's answer) on the job's thread and turns its events into
progress. The **keeper** renews the lease every third of ``AGENTMESH_JOB_LEASE_S``, and
wakes early on the job's change notification; when the lease is gone (the sweeper gave
the job to another worker), a client cancelled the job, or the worker is stopping and
the grace period ran out, it cancels the run, which stops the agent's graph at its
next step (its checkpoints stay in Memory, so whoever continues the thread resumes
from there).

A database outage (PostgreSQL restarting, a failover) is not a failure of the run.
The keeper goes on renewing through it for as long as the lease it last renewed
lasts, and stops the run only once that lease has run out (from then on the sweeper
may give the job to another worker). A progress write that meets an outage is
skipped (the next one carries it), and the attempt's end is retried with backoff for
``END_WRITE_RETRY_S``: the run's work is kept rather than done again.

Every write carries the fence of the claim: a worker that lost its lease changes
nothing any more, so a job completes once however often its message is delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]
import grpc
import redis.asyncio
import structlog
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry import trace
from prometheus_client import Counter, Histogram

from agentmesh.core.changes import ChangeFeed
from agentmesh.core.context import bind_job_id, reset_job_id
from agentmesh.core.errors import Unavailable
from agentmesh.core.names import AGENTS, JOBS
from agentmesh.core.outages import as_unavailable
from agentmesh.core.tracing import context_of
from agentmesh.job import metrics
from agentmesh.job.convert import error_json, policy_of
from agentmesh.job.credentials import TenantTokens
from agentmesh.job.domain.policy import is_transient
from agentmesh.job.domain.states import TERMINAL, State, after_failure
from agentmesh.job.settings import JobSettings, WorkerSettings
from agentmesh.job.stores.jobs import (
    JOB_CHANGES,
    change_job,
    claim_job,
    release_dispatch,
    renew_lease,
)
from agentmesh.v1 import agent_pb2, agent_pb2_grpc, common_pb2

_log = structlog.get_logger("agentmesh.job.worker")

MAX_RESULT_BYTES: Final = 1024 * 1024
"""Largest job result, as JSON; a larger one fails the job (RESULT_TOO_LARGE)."""
MAX_PROGRESS_MESSAGE_CHARS: Final = 512
END_WRITE_RETRY_S: Final = 30.0
"""How long the end of an attempt is retried while the database is unreachable; the
write is guarded by the fence, so a retry that comes after the sweeper reaped the job
changes nothing."""
OUTAGE_RETRY_S: Final = (0.1, 2.0)
"""First and longest wait between retries of a write that met a database outage."""

FINISHED: Final = Counter(
    "agentmesh_job_attempts_total",
    "Job attempts run by workers, by how they ended (succeeded, input_required, retry,"
    " failed, cancelled, handed_back, lost, stale).",
    ("outcome",),
)
ATTEMPT_SECONDS: Final = Histogram(
    "agentmesh_job_attempt_seconds",
    "Time from a worker's claim of a job's attempt to its end, by outcome.",
    ("outcome",),
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600),
)


@dataclass
class _Tracker:
    """What the run's events said so far."""

    stage: str = ""
    message: str = ""
    percent: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    final: agent_pb2.RunResult | None = None
    written: float = 0.0
    dirty: bool = False
    text: list[str] = field(default_factory=list)

    def see(self, event: agent_pb2.AgentEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "state_update":
            self.stage = event.state_update.node[:128]
            reported = event.state_update.values.fields.get("progress")
            if reported is not None and reported.HasField("struct_value"):
                values = json_format.MessageToDict(reported.struct_value)
                percent = values.get("percent")
                if isinstance(percent, int | float) and 0 <= percent <= 100:
                    self.percent = float(percent)
                self.stage = str(values.get("stage") or self.stage)[:128]
                if values.get("message"):
                    self.message = str(values["message"])[:MAX_PROGRESS_MESSAGE_CHARS]
            self.dirty = True
        elif kind == "message_delta":
            self.text.append(event.message_delta.text)
            joined = "".join(self.text)[-MAX_PROGRESS_MESSAGE_CHARS:]
            self.text = [joined]
            self.message = joined
            self.dirty = True
        elif kind == "usage":
            self.input_tokens = event.usage.input_tokens
            self.output_tokens = event.usage.output_tokens
        elif kind == "final":
            self.final = event.final
            if event.final.usage.total_tokens:
                self.input_tokens = event.final.usage.input_tokens
                self.output_tokens = event.final.usage.output_tokens

    def progress_json(self, percent: float | None = None) -> str:
        return json.dumps(
            {
                "percent": self.percent if percent is None else percent,
                "stage": self.stage,
                "message": self.message,
                "time": datetime.now(UTC).isoformat(),
            }
        )


def _reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return ""
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


def _outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the database is unreachable for now (retry later), as
    opposed to a bug or a refused statement."""
    return isinstance(exc, Unavailable | asyncpg.InterfaceError) or as_unavailable(exc) is not None


def _result_json(final: agent_pb2.RunResult) -> str:
    if final.HasField("output"):
        value: Any = json_format.MessageToDict(final.output)
    else:
        value = {"text": "\n".join(part.text for part in final.parts if part.text)}
    return json.dumps(value)


def run_key(job_id: str, resume: Mapping[str, Any] | None) -> str:
    """The idempotency key of the agent run an attempt makes: the job's input run, or
    the run answering one interrupt (its id hashed: it is the client's text)."""
    if resume is None:
        return f"job:{job_id}:input"
    digest = hashlib.sha256(str(resume["interrupt_id"]).encode()).hexdigest()[:32]
    return f"job:{job_id}:resume:{digest}"


class JobExecutor:
    """Runs the attempts this worker process receives."""

    def __init__(
        self,
        *,
        job: JobSettings,
        worker: WorkerSettings,
        pool: asyncpg.Pool,
        client: redis.asyncio.Redis,
        agents: agent_pb2_grpc.AgentServiceAsyncStub,
        tokens: TenantTokens,
        changes: ChangeFeed,
        owner: str,
    ) -> None:
        self._job = job
        self._worker = worker
        self._pool = pool
        self._redis = client
        self._agents = agents
        self._tokens = tokens
        self._changes = changes
        self._owner = owner
        self._stopping: float | None = None
        self._stop_event = asyncio.Event()
        self._running: set[asyncio.Task[Any]] = set()

    async def stop(self) -> None:
        """Stops taking attempts; running ones get ``shutdown_grace_s`` to finish, then
        are handed back. Returns when none is left."""
        self._stopping = time.monotonic()
        self._stop_event.set()
        running = list(self._running)
        if running:
            await asyncio.wait(running)

    async def run(self, tenant: str, job_id: str, attempt: int, traceparent: str = "") -> str:
        """Runs the tenant's job's ``attempt`` if it is still there to run; returns how
        it ended."""
        if self._stopping is not None:
            await release_dispatch(self._pool, tenant, job_id, attempt)
            return "refused"
        task = asyncio.current_task()
        assert task is not None
        self._running.add(task)
        try:
            return await self._attempt(tenant, job_id, attempt, traceparent)
        finally:
            self._running.discard(task)

    async def _attempt(self, tenant: str, job_id: str, attempt: int, traceparent: str) -> str:
        # One trace from the call that created the job through this attempt into the
        # agent run it drives; every log line of the attempt names the job.
        span = trace.get_tracer("agentmesh.job").start_as_current_span(
            "job.attempt",
            context=context_of(traceparent),
            kind=trace.SpanKind.CONSUMER,
            attributes={"agentmesh.job_id": job_id, "agentmesh.attempt": attempt},
        )
        token = bind_job_id(job_id)
        try:
            with span:
                return await self._claimed_attempt(tenant, job_id, attempt)
        finally:
            reset_job_id(token)

    async def _claimed_attempt(self, tenant: str, job_id: str, attempt: int) -> str:
        log = _log.bind(job_id=job_id, tenant=tenant, attempt=attempt)
        row = await claim_job(
            self._pool,
            tenant,
            job_id,
            attempt=attempt,
            owner=self._owner,
            lease_s=self._job.lease_s,
        )
        if row is None:
            FINISHED.labels("stale").inc()
            log.info("job attempt not there to run (taken, cancelled or superseded)")
            return "stale"
        started = time.monotonic()
        await JOB_CHANGES.publish(self._redis, tenant, job_id, row["sequence"])
        log.info("job attempt started", fence=row["fence"], thread_id=row["thread_id"])
        # The first progress write waits an interval like the others: a job shorter
        # than that writes only its claim and its end.
        tracker = _Tracker(written=time.monotonic())
        async with self._changes.subscription(tenant, job_id) as changed:
            run = asyncio.create_task(self._drive(tenant, row, tracker))
            keeper = asyncio.create_task(self._keep(tenant, job_id, row["fence"], changed, run))
            try:
                outcome = await self._finish(tenant, row, tracker, run, keeper)
            finally:
                keeper.cancel()
                run.cancel()
                with contextlib.suppress(BaseException):
                    await keeper
                with contextlib.suppress(BaseException):
                    await run
        FINISHED.labels(outcome).inc()
        ATTEMPT_SECONDS.labels(outcome).observe(time.monotonic() - started)
        log.info("job attempt ended", outcome=outcome)
        return outcome

    # -- the run -----------------------------------------------------------------------

    async def _events(
        self, tenant: str, row: asyncpg.Record, *, continue_only: bool = False
    ) -> AsyncIterator[agent_pb2.AgentEvent]:
        # The channel's interceptors carry the attempt's span (a child of the caller's).
        metadata = [("authorization", self._tokens.authorization(tenant))]
        resume = json.loads(row["resume"]) if row["resume"] else None
        # The run's idempotency key on the job's thread: an attempt that repeats a run
        # the agent already finished (its worker died before recording the end) gets
        # that run's result again instead of a second turn, and one that stopped early
        # continues from its last checkpoint.
        options = agent_pb2.RunOptions(
            job=JOBS.format(row["id"]),
            session=row["session"],
            request_id=run_key(row["id"], resume),
        )
        if resume is not None and not continue_only:
            answer = struct_pb2.Value()
            json_format.ParseDict(resume["answer"], answer)
            call: Any = self._agents.ResumeAgent(
                agent_pb2.ResumeAgentRequest(
                    name=AGENTS.format(row["agent"]),
                    thread_id=row["thread_id"],
                    resume=common_pb2.ResumeInput(
                        interrupt_id=resume["interrupt_id"], answer=answer
                    ),
                    options=options,
                ),
                metadata=metadata,
                timeout=self._worker.job_timeout_s,
            )
        else:
            request = agent_pb2.StreamAgentRequest(
                name=AGENTS.format(row["agent"]), thread_id=row["thread_id"], options=options
            )
            if not continue_only:
                json_format.Parse(row["input"], request.input)
                for part in json.loads(row["parts"]):
                    json_format.ParseDict(part, request.parts.add())
            call = self._agents.StreamAgent(
                request, metadata=metadata, timeout=self._worker.job_timeout_s
            )
        async for event in call:
            yield event

    async def _drive(self, tenant: str, row: asyncpg.Record, tracker: _Tracker) -> None:
        try:
            await self._consume(self._events(tenant, row), tenant, row, tracker)
        except grpc.aio.AioRpcError as error:
            # The thread already holds this work: a run that stopped early (its worker
            # died), or a resume the agent took before its worker died. Continue it.
            if error.code() != grpc.StatusCode.FAILED_PRECONDITION or _reason(error) not in (
                "UNFINISHED_RUN",
                "NO_PENDING_INTERRUPT",
            ):
                raise
            events = self._events(tenant, row, continue_only=True)
            await self._consume(events, tenant, row, tracker)

    async def _consume(
        self,
        events: AsyncIterator[agent_pb2.AgentEvent],
        tenant: str,
        row: asyncpg.Record,
        tracker: _Tracker,
    ) -> None:
        async for event in events:
            tracker.see(event)
            now = time.monotonic()
            if tracker.dirty and now - tracker.written >= self._worker.progress_interval_s:
                tracker.dirty = False
                tracker.written = now
                try:
                    changed = await change_job(
                        self._pool,
                        tenant,
                        row["id"],
                        states=[State.RUNNING],
                        when=[("fence = {}", (row["fence"],))],
                        sets=[
                            ("progress = {}::jsonb", (tracker.progress_json(),)),
                            ("input_tokens = {}", (tracker.input_tokens,)),
                            ("output_tokens = {}", (tracker.output_tokens,)),
                        ],
                    )
                except Exception as exc:
                    if not _outage(exc):
                        raise
                    # Progress is not worth stopping the run for: the next write (or
                    # the end) carries it.
                    tracker.dirty = True
                    _log.warning("job progress not written", job_id=row["id"], error=repr(exc))
                    continue
                if changed is not None:
                    await JOB_CHANGES.publish(self._redis, tenant, row["id"], changed["sequence"])

    # -- the keeper --------------------------------------------------------------------

    async def _keep(
        self,
        tenant: str,
        job_id: str,
        fence: int,
        changed: asyncio.Event,
        run: asyncio.Task[None],
    ) -> str:
        interval = self._job.lease_s / 3
        renewed = time.monotonic()  # the claim took the lease
        outage = False
        while True:
            wait = min(interval, OUTAGE_RETRY_S[1]) if outage else interval
            if self._stopping is not None:
                left = self._stopping + self._worker.shutdown_grace_s - time.monotonic()
                if left <= 0:
                    run.cancel("handback")
                    return "handback"
                wait = min(wait, left)
            changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._woken(changed)
            asked = time.monotonic()
            try:
                state = await renew_lease(
                    self._pool, tenant, job_id, fence=fence, lease_s=self._job.lease_s
                )
            except Exception as exc:
                if not _outage(exc):
                    raise
                # The lease renewed last still holds: keep running until it runs out;
                # past it the job may be given to another worker, so stop.
                if time.monotonic() - renewed >= self._job.lease_s:
                    _log.warning("job lease lost to a database outage", job_id=job_id)
                    run.cancel("lost")
                    return "lost"
                outage = True
                _log.warning("job lease not renewed; retrying", job_id=job_id, error=repr(exc))
                continue
            renewed, outage = asked, False
            if state is None:
                run.cancel("lost")
                return "lost"
            if state is State.CANCELLING:
                run.cancel("cancel")
                return "cancel"

    async def _woken(self, changed: asyncio.Event) -> None:
        stop = asyncio.ensure_future(self._stop_event.wait())
        change = asyncio.ensure_future(changed.wait())
        try:
            await asyncio.wait({stop, change}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            change.cancel()

    # -- the end -----------------------------------------------------------------------

    async def _finish(
        self,
        tenant: str,
        row: asyncpg.Record,
        tracker: _Tracker,
        run: asyncio.Task[None],
        keeper: asyncio.Task[str],
    ) -> str:
        error: BaseException | None = None
        try:
            await run
        except asyncio.CancelledError:
            if not run.cancelled():
                raise  # this coroutine itself is cancelled (the process is stopping)
            why = keeper.result() if keeper.done() and not keeper.cancelled() else "lost"
            return await self._stopped(tenant, row, tracker, why)
        except Exception as exc:  # the agent's refusal, an outage, or a bug of ours
            error = exc
        if error is None and tracker.final is not None:
            return await self._completed(tenant, row, tracker, tracker.final)
        return await self._failed(tenant, row, tracker, error)

    async def _write(
        self,
        tenant: str,
        row: asyncpg.Record,
        states: list[State],
        sets: list[tuple[str, tuple[Any, ...]]],
    ) -> asyncpg.Record | None:
        deadline = time.monotonic() + END_WRITE_RETRY_S
        pause = OUTAGE_RETRY_S[0]
        while True:
            try:
                changed = await change_job(
                    self._pool,
                    tenant,
                    row["id"],
                    states=states,
                    when=[("fence = {}", (row["fence"],))],
                    sets=[*sets, ("lease_owner = NULL", ()), ("lease_expire_time = NULL", ())],
                )
                break
            except Exception as exc:
                if not _outage(exc) or time.monotonic() + pause > deadline:
                    raise
                _log.warning(
                    "job attempt end not written; retrying", job_id=row["id"], error=repr(exc)
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, OUTAGE_RETRY_S[1])
        if changed is not None:
            await JOB_CHANGES.publish(self._redis, tenant, row["id"], changed["sequence"])
        return changed

    async def _end(
        self,
        tenant: str,
        row: asyncpg.Record,
        tracker: _Tracker,
        target: State,
        sets: list[tuple[str, tuple[Any, ...]]],
        outcome: str,
    ) -> str:
        """Moves the job from RUNNING to ``target``; when a client cancelled it
        meanwhile, the cancel wins and the job is CANCELLED instead."""
        usage = [
            ("input_tokens = {}", (tracker.input_tokens,)),
            ("output_tokens = {}", (tracker.output_tokens,)),
        ]
        if await self._write(
            tenant, row, [State.RUNNING], [("state = {}", (int(target),)), *sets, *usage]
        ):
            if target in TERMINAL:
                metrics.finished(target, row["create_time"])
            elif target is State.PENDING and outcome == "retry":
                metrics.RETRIES.labels("failed_attempt").inc()
            return outcome
        return await self._cancelled(tenant, row, tracker)

    async def _cancelled(self, tenant: str, row: asyncpg.Record, tracker: _Tracker) -> str:
        reason = "cancelled by a client"
        changed = await self._write(
            tenant,
            row,
            [State.CANCELLING],
            [
                ("state = {}", (int(State.CANCELLED),)),
                ("end_time = now()", ()),
                ("resume = NULL", ()),
                (
                    "error = {}::jsonb",
                    (error_json(grpc.StatusCode.CANCELLED.value[0], reason, "JOB_CANCELLED"),),
                ),
                ("input_tokens = {}", (tracker.input_tokens,)),
                ("output_tokens = {}", (tracker.output_tokens,)),
            ],
        )
        if changed is None:
            return "lost"
        metrics.finished(State.CANCELLED, row["create_time"])
        return "cancelled"

    async def _completed(
        self, tenant: str, row: asyncpg.Record, tracker: _Tracker, final: agent_pb2.RunResult
    ) -> str:
        if final.status == agent_pb2.RUN_STATUS_INTERRUPTED:
            interrupt = json.dumps(json_format.MessageToDict(final.interrupt))
            return await self._end(
                tenant,
                row,
                tracker,
                State.INPUT_REQUIRED,
                [
                    ("interrupt = {}::jsonb", (interrupt,)),
                    ("resume = NULL", ()),
                    ("progress = {}::jsonb", (tracker.progress_json(),)),
                ],
                "input_required",
            )
        if final.status != agent_pb2.RUN_STATUS_COMPLETED:
            code = final.error.code or grpc.StatusCode.UNKNOWN.value[0]
            return await self._failure(
                tenant, row, tracker, code, final.error.message or "the run failed", "RUN_FAILED"
            )
        result = _result_json(final)
        if len(result.encode()) > MAX_RESULT_BYTES:
            return await self._failure(
                tenant,
                row,
                tracker,
                grpc.StatusCode.FAILED_PRECONDITION.value[0],
                f"the agent's result is larger than {MAX_RESULT_BYTES} bytes",
                "RESULT_TOO_LARGE",
            )
        return await self._end(
            tenant,
            row,
            tracker,
            State.SUCCEEDED,
            [
                ("result = {}::jsonb", (result,)),
                ("end_time = now()", ()),
                ("resume = NULL", ()),
                ("progress = {}::jsonb", (tracker.progress_json(100.0),)),
            ],
            "succeeded",
        )

    async def _failed(
        self, tenant: str, row: asyncpg.Record, tracker: _Tracker, error: BaseException | None
    ) -> str:
        if isinstance(error, grpc.aio.AioRpcError):
            return await self._failure(
                tenant,
                row,
                tracker,
                error.code().value[0],
                error.details() or error.code().name,
                _reason(error) or error.code().name,
            )
        _log.error("job attempt broke", job_id=row["id"], error=repr(error))
        return await self._failure(
            tenant,
            row,
            tracker,
            grpc.StatusCode.INTERNAL.value[0],
            "the worker failed running the job" if error else "the run ended without a result",
            "WORKER_ERROR",
        )

    async def _failure(
        self,
        tenant: str,
        row: asyncpg.Record,
        tracker: _Tracker,
        code: int,
        message: str,
        reason: str,
    ) -> str:
        status = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
        target = after_failure(
            transient=is_transient(status),
            attempt=row["attempt"],
            attempt_limit=row["attempt_limit"],
        )
        error = ("error = {}::jsonb", (error_json(code, message, reason),))
        if target is State.PENDING:
            delay = policy_of(row).backoff_s(row["attempt"])
            return await self._end(
                tenant,
                row,
                tracker,
                State.PENDING,
                [
                    error,
                    ("attempt = attempt + 1", ()),
                    ("schedule_time = now() + make_interval(secs => {})", (delay,)),
                    ("dispatch_time = NULL", ()),
                    ("start_time = NULL", ()),
                ],
                "retry",
            )
        return await self._end(
            tenant, row, tracker, State.FAILED, [error, ("end_time = now()", ())], "failed"
        )

    async def _stopped(self, tenant: str, row: asyncpg.Record, tracker: _Tracker, why: str) -> str:
        if why == "cancel":
            return await self._cancelled(tenant, row, tracker)
        if why == "handback":
            # Not a failure: the same attempt goes to another worker, which continues
            # the thread from its last checkpoint.
            return await self._end(
                tenant,
                row,
                tracker,
                State.PENDING,
                [
                    ("schedule_time = now()", ()),
                    ("dispatch_time = NULL", ()),
                    ("progress = {}::jsonb", (tracker.progress_json(),)),
                ],
                "handed_back",
            )
        return "lost"
