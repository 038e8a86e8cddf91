"""JobService adapter: validate, call the store or the state machine, convert.

A job is stored before anything else happens; its message is sent after the commit
(``dispatch.py``). Every change is a conditional update (``stores/jobs.py``) whose
starting state the state machine names (``domain/states.py``); a change that lost a
race with another reads the job again and decides again. After each change the job's
watches are woken (``core/changes.py``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]
import grpc
from google.protobuf import json_format

from agentmesh.core.context import current_tenant
from agentmesh.core.contract import ServicerContext
from agentmesh.core.db import query_timeout
from agentmesh.core.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from agentmesh.core.filtering import EQUALITY, TIME_RANGE, FieldRule, parse_filter
from agentmesh.core.json_schema import schema_violations, whole_numbers
from agentmesh.core.names import AGENTS, JOBS, SESSIONS, ResourcePattern, new_id, validate_id
from agentmesh.core.offload import convert_sized
from agentmesh.core.paging import Keyset, page_size
from agentmesh.core.run_input import parts_text
from agentmesh.core.sql import item_bytes
from agentmesh.core.storage import check_json_value, struct_to_jsonb
from agentmesh.core.tracing import current_traceparent
from agentmesh.core.validation import (
    Violations,
    check_duration,
    check_labels,
    validate_request_id,
)
from agentmesh.job import metrics
from agentmesh.job.convert import error_json, job_proto
from agentmesh.job.deps import JobDeps
from agentmesh.job.domain.policy import read_policy
from agentmesh.job.domain.states import (
    State,
    cancel_target,
    check_resume,
    check_retry,
)
from agentmesh.job.settings import MAX_START_DELAY_S, JobSettings
from agentmesh.job.stores.jobs import (
    JOB_CHANGES,
    ORDERS,
    NewJob,
    change_job,
    count_active,
    get_job,
    insert_job,
    list_jobs,
)
from agentmesh.job.watch import watch_job
from agentmesh.v1 import job_pb2, job_pb2_grpc

DEFAULT_PAGE_SIZE: Final = 50
MAX_REASON_CHARS: Final = 1024
MAX_INTERRUPT_ID_CHARS: Final = 128
RACE_RETRIES: Final = 5
"""Times a change that lost a race reads the job again before answering ABORTED."""
PAGE: Final = Keyset(datetime, str)
"""ListJobs pages by (time of the order, id)."""


def _name_value(pattern: ResourcePattern) -> FieldRule:
    def check(value: str) -> None:
        try:
            pattern.parse(value)
        except InvalidArgument as exc:
            raise ValueError(exc.violations[0][1]) from None

    return FieldRule(EQUALITY, check)


def _state_value(value: str) -> None:
    if value not in State.__members__:
        raise ValueError(f"expected one of {', '.join(State.__members__)}")


_FILTER_RULES: Final = {
    "state": FieldRule(EQUALITY, _state_value),
    "agent": _name_value(AGENTS),
    "session": _name_value(SESSIONS),
    "labels.*": FieldRule(EQUALITY),
    "create_time": TIME_RANGE,
    "update_time": TIME_RANGE,
}


@dataclass(frozen=True)
class _Draft:
    job: NewJob
    structured: dict[str, Any]


def _draft(request: job_pb2.CreateJobRequest, settings: JobSettings) -> _Draft:
    """The job ``request`` asks for, or INVALID_ARGUMENT naming every bad field."""
    job = request.job
    violations = Violations()
    if request.job_id:
        violations.check(lambda: validate_id(request.job_id, field="job_id"))
    violations.check(lambda: validate_request_id(request.request_id))
    agent_id = violations.check(lambda: AGENTS.parse(job.agent, field="job.agent"))
    if job.session:
        violations.check(lambda: SESSIONS.parse(job.session, field="job.session"))
    check_labels(job.labels, violations, field="job.labels")
    if job.priority not in job_pb2.JobPriority.values():
        violations.add("job.priority", "not a JobPriority")
    policy = read_policy(job.retry_policy, violations)
    delay = 0.0
    if job.HasField("start_delay"):
        checked = violations.check(
            lambda: check_duration(
                job.start_delay.seconds,
                job.start_delay.nanos,
                field="job.start_delay",
                min_s=0.0,
                max_s=MAX_START_DELAY_S,
            )
        )
        delay = checked or 0.0
    size = job.input.ByteSize() + sum(part.ByteSize() for part in job.parts)
    if size > settings.max_input_bytes:
        violations.add(
            "job.input", f"{size} bytes with the parts; at most {settings.max_input_bytes}"
        )
        violations.raise_if_any()
    input_json = violations.check(
        lambda: struct_to_jsonb(job.input, field="job.input", max_bytes=settings.max_input_bytes)
    )
    text = parts_text(job.parts, violations, field="job.parts")
    structured = whole_numbers(json_format.MessageToDict(job.input))
    if not structured and not text:
        violations.add("job.parts", "give the job something to do: parts (a message) or input")
    violations.raise_if_any()
    assert agent_id is not None
    assert input_json is not None
    job_id = request.job_id or new_id()
    parts = [json_format.MessageToDict(part) for part in job.parts]
    return _Draft(
        NewJob(
            job_id=job_id,
            agent_id=agent_id,
            input_json=input_json,
            parts_json=json.dumps(parts),
            session=job.session,
            priority=job.priority or job_pb2.JOB_PRIORITY_DEFAULT,
            labels_json=json.dumps(dict(job.labels)),
            max_attempts=policy.max_attempts,
            initial_backoff_ms=round(policy.initial_backoff_s * 1000),
            max_backoff_ms=round(policy.max_backoff_s * 1000),
            backoff_multiplier=policy.multiplier,
            # A thread of its own per job: its checkpoints live in Memory under it.
            thread_id=f"job-{job_id}.{uuid.uuid4().hex[:12]}",
            start_delay_s=delay,
            traceparent=current_traceparent(),
        ),
        structured,
    )


def _order(order_by: str) -> str:
    normalized = " ".join(order_by.lower().split()) or "create_time desc"
    if normalized not in ORDERS:
        raise InvalidArgument("order_by", f"expected one of: {', '.join(ORDERS)}")
    return normalized


class JobServicer(job_pb2_grpc.JobServiceServicer):
    """Every JobService RPC over the shared ``JobDeps``."""

    def __init__(self, deps: JobDeps) -> None:
        self.deps = deps

    async def _changed(self, tenant: str, row: asyncpg.Record) -> job_pb2.Job:
        await JOB_CHANGES.publish(self.deps.redis, tenant, row["id"], row["sequence"])
        return job_proto(row)

    async def _admit(self, conn: asyncpg.Connection, tenant: str) -> None:
        limit = self.deps.settings.tenant_active_jobs
        if limit and await count_active(conn, tenant, up_to=limit) >= limit:
            raise ResourceExhausted(
                f"this tenant has {limit} jobs that have not ended, its limit; retry when"
                " one ends (or cancel one)",
                5.0,
                reason="TENANT_ACTIVE_JOBS",
            )

    async def _job(self, tenant: str, name: str, field: str = "name") -> asyncpg.Record:
        job_id = JOBS.parse(name, field=field)
        row = await get_job(self.deps.pool, tenant, job_id)
        if row is None:
            raise NotFound(JOBS.resource_type, name)
        return row

    async def CreateJob(
        self, request: job_pb2.CreateJobRequest, context: ServicerContext
    ) -> job_pb2.Job:
        draft = _draft(request, self.deps.settings)
        validator = await self.deps.agents.validator(draft.job.agent_id)
        violations = Violations()
        schema_violations(draft.structured, validator, violations, field="job.input")
        violations.raise_if_any()
        tenant = current_tenant()
        created: list[asyncpg.Record] = []

        async with self.deps.pool.acquire() as conn, conn.transaction():

            async def write() -> job_pb2.Job:
                await self._admit(conn, tenant)
                row = await insert_job(conn, tenant, draft.job)
                if row is None:
                    raise AlreadyExists(JOBS.resource_type, JOBS.format(draft.job.job_id))
                created.append(row)
                return job_proto(row)

            job = await self.deps.request_ids.once(
                conn, tenant, "CreateJob", request, job_pb2.Job, write
            )
        if created:
            metrics.CREATED.labels(metrics.priority_label(draft.job.priority)).inc()
            if not draft.job.start_delay_s:
                await self.deps.dispatcher.send(
                    tenant,
                    draft.job.job_id,
                    1,
                    draft.job.priority,
                    traceparent=draft.job.traceparent,
                )
        return job

    async def GetJob(self, request: job_pb2.GetJobRequest, context: ServicerContext) -> job_pb2.Job:
        return job_proto(await self._job(current_tenant(), request.name))

    async def ListJobs(
        self, request: job_pb2.ListJobsRequest, context: ServicerContext
    ) -> job_pb2.ListJobsResponse:
        size = page_size(request.page_size, default=DEFAULT_PAGE_SIZE)
        terms = parse_filter(request.filter, _FILTER_RULES)
        order = _order(request.order_by)
        query = {"filter": request.filter, "order_by": order}
        after = PAGE.decode(request.page_token, query)
        budget = self.deps.process.page_max_bytes
        column = ORDERS[order][0]
        with query_timeout(self.deps.process.db_list_statement_timeout_ms):
            rows = await list_jobs(
                self.deps.pool,
                current_tenant(),
                terms=terms,
                order=order,
                after=after,
                limit=size + 1,
                budget=budget,
            )
        page, next_token = PAGE.page(
            rows,
            size,
            query,
            key=lambda row: (row[column], row["id"]),
            budget=budget,
            item_bytes=item_bytes,
        )
        jobs = await convert_sized(
            lambda: [job_proto(row) for row in page], sum(map(item_bytes, page))
        )
        return job_pb2.ListJobsResponse(jobs=jobs, next_page_token=next_token)

    async def CancelJob(
        self, request: job_pb2.CancelJobRequest, context: ServicerContext
    ) -> job_pb2.Job:
        violations = Violations()
        violations.check(lambda: JOBS.parse(request.name))
        reason = violations.text(
            request.reason, "reason", required=False, max_chars=MAX_REASON_CHARS
        )
        violations.raise_if_any()
        tenant = current_tenant()
        for _ in range(RACE_RETRIES):
            row = await self._job(tenant, request.name)
            state = State(row["state"])
            target = cancel_target(row["id"], state)
            if target is None:
                return job_proto(row)
            if target is State.CANCELLING:
                sets: list[tuple[str, tuple[Any, ...]]] = [
                    ("state = {}", (int(State.CANCELLING),)),
                    ("cancel_reason = {}", (reason,)),
                ]
            else:
                why = f"cancelled: {reason}" if reason else "cancelled by a client"
                sets = [
                    ("state = {}", (int(State.CANCELLED),)),
                    ("cancel_reason = {}", (reason,)),
                    ("end_time = now()", ()),
                    ("interrupt = NULL", ()),
                    ("resume = NULL", ()),
                    ("lease_owner = NULL", ()),
                    ("lease_expire_time = NULL", ()),
                    (
                        "error = {}::jsonb",
                        (error_json(grpc.StatusCode.CANCELLED.value[0], why, "JOB_CANCELLED"),),
                    ),
                ]
            changed = await change_job(self.deps.pool, tenant, row["id"], states=[state], sets=sets)
            if changed is not None:
                if target is State.CANCELLED:
                    metrics.finished(State.CANCELLED, changed["create_time"])
                return await self._changed(tenant, changed)
        raise Aborted("CONCURRENT_CHANGE", f"{request.name} kept changing; retry the cancel")

    async def ResumeJob(
        self, request: job_pb2.ResumeJobRequest, context: ServicerContext
    ) -> job_pb2.Job:
        violations = Violations()
        violations.check(lambda: JOBS.parse(request.name))
        resume = request.resume
        answer_json = ""
        if not request.HasField("resume"):
            violations.add("resume", "required: the interrupt id and the answer")
        else:
            violations.text(
                resume.interrupt_id,
                "resume.interrupt_id",
                required=True,
                max_chars=MAX_INTERRUPT_ID_CHARS,
            )
            if not resume.HasField("answer"):
                violations.add("resume.answer", "required (any JSON value)")
            elif resume.answer.ByteSize() > self.deps.settings.max_input_bytes:
                violations.add(
                    "resume.answer", f"at most {self.deps.settings.max_input_bytes} bytes"
                )
            else:
                answer = json_format.MessageToDict(resume.answer)
                violations.check(lambda: check_json_value(answer, field="resume.answer"))
                answer_json = json.dumps({"interrupt_id": resume.interrupt_id, "answer": answer})
        violations.raise_if_any()
        tenant = current_tenant()
        row = await self._job(tenant, request.name)
        check_resume(row["id"], State(row["state"]))
        pending = json.loads(row["interrupt"] or "{}").get("id", "")
        if pending != resume.interrupt_id:
            raise FailedPrecondition(
                "INTERRUPT_MISMATCH",
                f"{request.name} waits on interrupt {pending!r}, not {resume.interrupt_id!r}",
                [("INTERRUPT", request.name, "answer the pending interrupt")],
            )
        traceparent = current_traceparent()
        changed = await change_job(
            self.deps.pool,
            tenant,
            row["id"],
            states=[State.INPUT_REQUIRED],
            when=[("attempt = {}", (row["attempt"],)), ("sequence = {}", (row["sequence"],))],
            sets=[
                ("state = {}", (int(State.RUNNING),)),
                ("resume = {}::jsonb", (answer_json,)),
                ("interrupt = NULL", ()),
                # Unowned until a worker claims it; past this the sweeper sends it again.
                ("lease_owner = NULL", ()),
                (
                    "lease_expire_time = now() + make_interval(secs => {})",
                    (self.deps.settings.lease_s,),
                ),
                ("dispatch_time = now()", ()),
                ("traceparent = {}", (traceparent,)),
            ],
        )
        if changed is None:
            raise Aborted("CONCURRENT_CHANGE", f"{request.name} changed meanwhile; get it again")
        job = await self._changed(tenant, changed)
        await self.deps.dispatcher.send(
            tenant, row["id"], row["attempt"], row["priority"], traceparent=traceparent
        )
        return job

    async def RetryJob(
        self, request: job_pb2.RetryJobRequest, context: ServicerContext
    ) -> job_pb2.Job:
        tenant = current_tenant()
        row = await self._job(tenant, request.name)
        state = State(row["state"])
        check_retry(row["id"], state)
        attempt = row["attempt"] + 1
        traceparent = current_traceparent()
        async with self.deps.pool.acquire() as conn, conn.transaction():
            await self._admit(conn, tenant)
            changed = await change_job(
                conn,
                tenant,
                row["id"],
                states=[state],
                when=[("attempt = {}", (row["attempt"],))],
                sets=[
                    ("state = {}", (int(State.PENDING),)),
                    ("attempt = {}", (attempt,)),
                    ("attempt_limit = {}", (attempt + row["max_attempts"] - 1,)),
                    ("schedule_time = now()", ()),
                    ("dispatch_time = now()", ()),
                    ("start_time = NULL", ()),
                    ("end_time = NULL", ()),
                    ("result = NULL", ()),
                    ("cancel_reason = NULL", ()),
                    ("interrupt = NULL", ()),
                    ("resume = NULL", ()),
                    ("lease_owner = NULL", ()),
                    ("lease_expire_time = NULL", ()),
                    ("traceparent = {}", (traceparent,)),
                ],
            )
        if changed is None:
            raise Aborted("CONCURRENT_CHANGE", f"{request.name} changed meanwhile; get it again")
        metrics.RETRIES.labels("asked").inc()
        job = await self._changed(tenant, changed)
        await self.deps.dispatcher.send(
            tenant, row["id"], attempt, row["priority"], traceparent=traceparent
        )
        return job

    async def WatchJob(
        self, request: job_pb2.WatchJobRequest, context: ServicerContext
    ) -> AsyncIterator[job_pb2.JobEvent]:
        violations = Violations()
        job_id = violations.check(lambda: JOBS.parse(request.name))
        if request.after_sequence < 0:
            violations.add("after_sequence", "must be 0 or more")
        violations.raise_if_any()
        assert job_id is not None
        async for event in watch_job(self.deps, current_tenant(), job_id, request.after_sequence):
            yield event
