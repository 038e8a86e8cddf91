"""The Job service's API on real PostgreSQL, Redis and Agent service, with no worker:
creating (validated against the agent's schema, idempotent, quota'd, dispatched once),
reading, listing, cancelling, retrying, resuming and watching jobs, each refusal with
its status and nothing changed, and every job invisible to other tenants."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest
import redis.asyncio
from google.protobuf import duration_pb2, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from agentmesh.core.server import RunningServer
from agentmesh.v1 import common_pb2, job_pb2
from component.conftest import Backends, credentials
from component.job_helpers import JobServer, serve_agent, serve_job
from component.memory_helpers import (
    error_info,
    eventually,
    expect_error,
    expect_invalid,
    field_violations,
    uid,
)

QUEUES = ("jobs-high", "jobs-default", "jobs-low")


@pytest.fixture(scope="module")
async def agent_server(
    memory_server: RunningServer, backends: Backends
) -> AsyncIterator[RunningServer]:
    async with serve_agent(memory_server.port, backends.redis_url) as running:
        yield running


@pytest.fixture(scope="module")
async def jobs(backends: Backends, agent_server: RunningServer) -> AsyncIterator[JobServer]:
    async with serve_job(backends, agent_server.port, AGENTMESH_JOB_WATCH_POLL_S="0.5") as server:
        yield server


def _echo(text: str = "hello", **fields: object) -> job_pb2.Job:
    return job_pb2.Job(agent="agents/echo", parts=[common_pb2.Part(text=text)], **fields)  # type: ignore[arg-type]


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _queued(client: redis.asyncio.Redis, job_id: str) -> list[tuple[str, list[object]]]:
    """The Dramatiq messages waiting for ``job_id``: (queue, args) each."""
    found = []
    for queue in QUEUES:
        for raw in (await client.hgetall(f"agentmesh:{queue}.msgs")).values():
            message = json.loads(raw)
            if message["args"][1] == job_id:
                found.append((queue, message["args"]))
    return found


async def test_create_stores_a_pending_job_with_defaults_and_sends_one_message(
    jobs: JobServer, redis_client: redis.asyncio.Redis
) -> None:
    tenant_name = f"job-{uid()}"
    tenant = credentials(tenant_name)
    created_before = _sample("agentmesh_job_created_total", priority="high")
    job = await jobs.stub.CreateJob(
        job_pb2.CreateJobRequest(
            job=_echo(labels={"team": "support"}, priority=job_pb2.JOB_PRIORITY_HIGH),
            job_id=f"j-{uid()}",
        ),
        metadata=tenant,
    )
    assert job.state == job_pb2.JOB_STATE_PENDING
    assert (job.attempt, job.sequence) == (1, 1)
    assert job.agent == "agents/echo"
    assert job.parts[0].text == "hello"
    assert job.labels == {"team": "support"}
    assert job.retry_policy.max_attempts == 3
    assert job.retry_policy.initial_backoff.seconds == 1
    assert job.thread_id.startswith(f"job-{job.name.removeprefix('jobs/')}.")
    assert job.create_time.seconds > 0
    assert job.schedule_time == job.create_time
    assert not job.HasField("start_time")
    job_id = job.name.removeprefix("jobs/")
    assert await _queued(redis_client, job_id) == [("jobs-high", [tenant_name, job_id, 1])]
    got = await jobs.stub.GetJob(job_pb2.GetJobRequest(name=job.name), metadata=tenant)
    assert got == job
    assert _sample("agentmesh_job_created_total", priority="high") == created_before + 1


async def test_create_is_idempotent_with_request_id(
    jobs: JobServer, redis_client: redis.asyncio.Redis
) -> None:
    tenant = credentials(f"job-{uid()}")
    request = job_pb2.CreateJobRequest(job=_echo(), request_id=f"req-{uid()}")
    first, second = await asyncio.gather(
        jobs.stub.CreateJob(request, metadata=tenant),
        jobs.stub.CreateJob(request, metadata=tenant),
        return_exceptions=True,
    )
    made = [r for r in (first, second) if isinstance(r, job_pb2.Job)]
    assert made, (first, second)
    again = await jobs.stub.CreateJob(request, metadata=tenant)
    assert all(job.name == again.name for job in made)
    listed = await jobs.stub.ListJobs(job_pb2.ListJobsRequest(), metadata=tenant)
    assert [j.name for j in listed.jobs] == [again.name]
    assert len(await _queued(redis_client, again.name.removeprefix("jobs/"))) == 1
    # The same key for another job is a client mistake.
    await expect_invalid(
        jobs.stub.CreateJob(
            job_pb2.CreateJobRequest(job=_echo("other"), request_id=request.request_id),
            metadata=tenant,
        ),
        "request_id",
    )


async def test_create_refuses_bad_input_and_stores_nothing(jobs: JobServer) -> None:
    tenant = credentials(f"job-{uid()}")
    stub = jobs.stub
    await expect_invalid(stub.CreateJob(job_pb2.CreateJobRequest(), metadata=tenant), "job.agent")
    await expect_invalid(
        stub.CreateJob(
            job_pb2.CreateJobRequest(job=job_pb2.Job(agent="agents/echo")), metadata=tenant
        ),
        "job.parts",
    )
    await expect_invalid(
        stub.CreateJob(job_pb2.CreateJobRequest(job=_echo(), job_id="Bad_Id"), metadata=tenant),
        "job_id",
    )
    await expect_invalid(
        stub.CreateJob(job_pb2.CreateJobRequest(job=_echo(priority=9)), metadata=tenant),
        "job.priority",
    )
    await expect_invalid(
        stub.CreateJob(
            job_pb2.CreateJobRequest(
                job=_echo(
                    retry_policy=job_pb2.RetryPolicy(max_attempts=50, backoff_multiplier=0.1),
                    start_delay=duration_pb2.Duration(seconds=8 * 86_400),
                )
            ),
            metadata=tenant,
        ),
        "job.retry_policy.max_attempts",
        "job.retry_policy.backoff_multiplier",
        "job.start_delay",
    )
    await expect_invalid(
        stub.CreateJob(job_pb2.CreateJobRequest(job=_echo("x" * (300 * 1024))), metadata=tenant),
        "job.input",
    )
    await expect_invalid(
        stub.CreateJob(job_pb2.CreateJobRequest(job=_echo("nul \x00")), metadata=tenant),
        "job.parts[0].text",
    )
    await expect_invalid(
        stub.CreateJob(
            job_pb2.CreateJobRequest(job=_echo(labels={"Bad Key": "v"})), metadata=tenant
        ),
        'job.labels["Bad Key"]',
    )
    # The agent's input schema: the summarizer takes 1-10 sentences and nothing else.
    violations = await field_violations(
        stub.CreateJob(
            job_pb2.CreateJobRequest(
                job=job_pb2.Job(
                    agent="agents/summarizer",
                    input=_struct(text="a b c.", sentences=99, colour="red"),
                )
            ),
            metadata=tenant,
        )
    )
    assert set(violations) == {"job.input.sentences", "job.input"}
    error = await expect_error(
        stub.CreateJob(
            job_pb2.CreateJobRequest(
                job=job_pb2.Job(agent="agents/nope", parts=[common_pb2.Part(text="x")])
            ),
            metadata=tenant,
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert "agents/nope" in (error.details() or "")
    listed = await stub.ListJobs(job_pb2.ListJobsRequest(), metadata=tenant)
    assert list(listed.jobs) == []


def _struct(**values: Any) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


async def test_a_taken_job_id_is_already_exists(jobs: JobServer) -> None:
    tenant = credentials(f"job-{uid()}")
    job_id = f"j-{uid()}"
    await jobs.stub.CreateJob(job_pb2.CreateJobRequest(job=_echo(), job_id=job_id), metadata=tenant)
    await expect_error(
        jobs.stub.CreateJob(job_pb2.CreateJobRequest(job=_echo(), job_id=job_id), metadata=tenant),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    # Another tenant's ids are its own.
    other = await jobs.stub.CreateJob(
        job_pb2.CreateJobRequest(job=_echo(), job_id=job_id), metadata=credentials(f"job-{uid()}")
    )
    assert other.name == f"jobs/{job_id}"


async def test_cancel_retry_resume_follow_the_state_machine(
    jobs: JobServer, redis_client: redis.asyncio.Redis
) -> None:
    tenant = credentials(f"job-{uid()}")
    stub = jobs.stub
    job = await stub.CreateJob(job_pb2.CreateJobRequest(job=_echo()), metadata=tenant)
    await expect_error(
        stub.ResumeJob(
            job_pb2.ResumeJobRequest(
                name=job.name,
                resume=common_pb2.ResumeInput(
                    interrupt_id="i", answer=struct_pb2.Value(bool_value=True)
                ),
            ),
            metadata=tenant,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    await expect_invalid(
        stub.ResumeJob(job_pb2.ResumeJobRequest(name=job.name), metadata=tenant), "resume"
    )
    retry_pending = await expect_error(
        stub.RetryJob(job_pb2.RetryJobRequest(name=job.name), metadata=tenant),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_info(retry_pending).reason == "JOB_PENDING"

    finished_before = _sample("agentmesh_job_finished_total", state="cancelled")
    cancelled = await stub.CancelJob(
        job_pb2.CancelJobRequest(name=job.name, reason="changed my mind"), metadata=tenant
    )
    assert _sample("agentmesh_job_finished_total", state="cancelled") == finished_before + 1
    assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
    assert cancelled.sequence == 2
    assert cancelled.error.code == grpc.StatusCode.CANCELLED.value[0]
    assert "changed my mind" in cancelled.error.message
    assert cancelled.HasField("end_time")
    again = await stub.CancelJob(job_pb2.CancelJobRequest(name=job.name), metadata=tenant)
    assert again == cancelled  # unchanged

    retried = await stub.RetryJob(job_pb2.RetryJobRequest(name=job.name), metadata=tenant)
    assert (retried.state, retried.attempt, retried.sequence) == (job_pb2.JOB_STATE_PENDING, 2, 3)
    assert not retried.HasField("end_time")
    job_id = job.name.removeprefix("jobs/")
    assert sorted(args[2] for _, args in await _queued(redis_client, job_id)) == [1, 2]  # type: ignore[type-var]

    await expect_invalid(
        stub.CancelJob(job_pb2.CancelJobRequest(name=job.name, reason="r" * 1025), metadata=tenant),
        "reason",
    )
    await expect_invalid(
        stub.GetJob(job_pb2.GetJobRequest(name="jobs/Bad"), metadata=tenant), "name"
    )


async def test_succeeded_and_failed_jobs_do_not_cancel(jobs: JobServer, db: asyncpg.Pool) -> None:
    tenant_name = f"job-{uid()}"
    tenant = credentials(tenant_name)
    job = await jobs.stub.CreateJob(job_pb2.CreateJobRequest(job=_echo()), metadata=tenant)
    # As a worker would leave it: SUCCEEDED.
    await db.execute(
        "UPDATE job.jobs SET state = 4 WHERE tenant = $1 AND id = $2",
        tenant_name,
        job.name.removeprefix("jobs/"),
    )
    error = await expect_error(
        jobs.stub.CancelJob(job_pb2.CancelJobRequest(name=job.name), metadata=tenant),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_info(error).reason == "JOB_SUCCEEDED"
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    kinds = {detail.type_url.rsplit(".", 1)[-1] for detail in status.details}
    assert "PreconditionFailure" in kinds
    got = await jobs.stub.GetJob(job_pb2.GetJobRequest(name=job.name), metadata=tenant)
    assert got.sequence == 1


async def test_another_tenants_job_is_not_found(jobs: JobServer) -> None:
    owner, stranger = credentials(f"job-{uid()}"), credentials(f"job-{uid()}")
    job = await jobs.stub.CreateJob(job_pb2.CreateJobRequest(job=_echo()), metadata=owner)
    stub = jobs.stub
    for call in (
        stub.GetJob(job_pb2.GetJobRequest(name=job.name), metadata=stranger),
        stub.CancelJob(job_pb2.CancelJobRequest(name=job.name), metadata=stranger),
        stub.RetryJob(job_pb2.RetryJobRequest(name=job.name), metadata=stranger),
        stub.ResumeJob(
            job_pb2.ResumeJobRequest(
                name=job.name,
                resume=common_pb2.ResumeInput(
                    interrupt_id="i", answer=struct_pb2.Value(bool_value=True)
                ),
            ),
            metadata=stranger,
        ),
    ):
        await expect_error(call, grpc.StatusCode.NOT_FOUND)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.WatchJob(job_pb2.WatchJobRequest(name=job.name), metadata=stranger):
            pass
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await stub.ListJobs(job_pb2.ListJobsRequest(), metadata=stranger)
    assert list(listed.jobs) == []
    got = await stub.GetJob(job_pb2.GetJobRequest(name=job.name), metadata=owner)
    assert got.state == job_pb2.JOB_STATE_PENDING
    assert got.sequence == 1


async def test_list_filters_orders_and_pages(jobs: JobServer) -> None:
    tenant = credentials(f"job-{uid()}")
    stub = jobs.stub
    made = []
    for i in range(5):
        made.append(
            await stub.CreateJob(
                job_pb2.CreateJobRequest(
                    job=_echo(
                        f"job {i}",
                        labels={"batch": "odd" if i % 2 else "even"},
                        session="sessions/s-1" if i == 0 else "",
                    )
                ),
                metadata=tenant,
            )
        )
    await stub.CancelJob(job_pb2.CancelJobRequest(name=made[1].name), metadata=tenant)

    async def names(**request: object) -> list[str]:
        response = await stub.ListJobs(job_pb2.ListJobsRequest(**request), metadata=tenant)  # type: ignore[arg-type]
        return [job.name for job in response.jobs]

    newest_first = [j.name for j in reversed(made)]
    assert await names() == newest_first
    assert await names(order_by="create_time") == newest_first[::-1]
    assert await names(order_by="update_time desc") == [
        made[1].name,
        *[n for n in newest_first if n != made[1].name],
    ]
    assert await names(filter="state = CANCELLED") == [made[1].name]
    assert await names(filter='labels.batch = "odd" AND state = PENDING') == [made[3].name]
    assert await names(filter='session = "sessions/s-1"') == [made[0].name]
    assert await names(filter='agent = "agents/echo"') == newest_first
    assert await names(filter='agent = "agents/other"') == []
    since = made[2].create_time.ToJsonString()
    assert await names(filter=f'create_time >= "{since}"') == newest_first[:3]

    paged: list[str] = []
    token = ""
    while True:
        response = await stub.ListJobs(
            job_pb2.ListJobsRequest(page_size=2, page_token=token, order_by="create_time"),
            metadata=tenant,
        )
        paged += [job.name for job in response.jobs]
        token = response.next_page_token
        if not token:
            break
    assert paged == newest_first[::-1]

    for bad in ("state = DONE", "colour = red", "agent = nope", "create_time > yesterday"):
        await expect_invalid(
            stub.ListJobs(job_pb2.ListJobsRequest(filter=bad), metadata=tenant), "filter"
        )
    await expect_invalid(
        stub.ListJobs(job_pb2.ListJobsRequest(order_by="name"), metadata=tenant), "order_by"
    )
    await expect_invalid(
        stub.ListJobs(job_pb2.ListJobsRequest(page_token="garbage"), metadata=tenant), "page_token"
    )
    first = await stub.ListJobs(job_pb2.ListJobsRequest(page_size=1), metadata=tenant)
    await expect_invalid(
        stub.ListJobs(
            job_pb2.ListJobsRequest(
                page_size=1, page_token=first.next_page_token, order_by="update_time"
            ),
            metadata=tenant,
        ),
        "page_token",
    )


async def test_watch_sends_the_current_state_then_changes_until_the_end(jobs: JobServer) -> None:
    tenant = credentials(f"job-{uid()}")
    stub = jobs.stub
    job = await stub.CreateJob(job_pb2.CreateJobRequest(job=_echo()), metadata=tenant)
    seen: list[job_pb2.JobEvent] = []
    first = asyncio.Event()

    async def watch() -> None:
        async for event in stub.WatchJob(job_pb2.WatchJobRequest(name=job.name), metadata=tenant):
            seen.append(event)
            first.set()

    watching = asyncio.create_task(watch())
    await asyncio.wait_for(first.wait(), 10)
    await stub.CancelJob(job_pb2.CancelJobRequest(name=job.name), metadata=tenant)
    await asyncio.wait_for(watching, 10)  # the stream ends by itself at the terminal state
    assert [e.sequence for e in seen] == [1, 2]
    assert [e.job.state for e in seen] == [job_pb2.JOB_STATE_PENDING, job_pb2.JOB_STATE_CANCELLED]
    assert seen[1].job.parts[0].text == "hello"  # the input comes with every change

    # Reconnecting after the first change replays the rest; the end sends nothing more.
    replay = [
        e
        async for e in stub.WatchJob(
            job_pb2.WatchJobRequest(name=job.name, after_sequence=1), metadata=tenant
        )
    ]
    assert [e.sequence for e in replay] == [2]
    assert replay[0].job == seen[1].job
    assert [
        e
        async for e in stub.WatchJob(
            job_pb2.WatchJobRequest(name=job.name, after_sequence=2), metadata=tenant
        )
    ] == []
    # An ended job watched from the start: its state, once.
    assert [
        e.job.state
        async for e in stub.WatchJob(job_pb2.WatchJobRequest(name=job.name), metadata=tenant)
    ] == [job_pb2.JOB_STATE_CANCELLED]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.WatchJob(
            job_pb2.WatchJobRequest(name=job.name, after_sequence=3), metadata=tenant
        ):
            pass
    assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.WatchJob(
            job_pb2.WatchJobRequest(name=job.name, after_sequence=-1), metadata=tenant
        ):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_tenant_past_its_active_jobs_is_refused_with_retry_info(
    backends: Backends, agent_server: RunningServer
) -> None:
    tenant = credentials(f"job-{uid()}")
    async with serve_job(
        backends, agent_server.port, AGENTMESH_JOB_TENANT_ACTIVE_JOBS="2"
    ) as server:
        first = await server.stub.CreateJob(job_pb2.CreateJobRequest(job=_echo()), metadata=tenant)
        await server.stub.CreateJob(job_pb2.CreateJobRequest(job=_echo()), metadata=tenant)
        error = await expect_error(
            server.stub.CreateJob(job_pb2.CreateJobRequest(job=_echo()), metadata=tenant),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert error_info(error).reason == "TENANT_ACTIVE_JOBS"
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        assert status is not None
        retry = error_details_pb2.RetryInfo()
        assert any(d.Unpack(retry) for d in status.details)
        assert retry.retry_delay.seconds >= 1
        # Another tenant is not affected, and an ended job frees room.
        await server.stub.CreateJob(
            job_pb2.CreateJobRequest(job=_echo()), metadata=credentials(f"job-{uid()}")
        )
        await server.stub.CancelJob(job_pb2.CancelJobRequest(name=first.name), metadata=tenant)
        await server.stub.CreateJob(job_pb2.CreateJobRequest(job=_echo()), metadata=tenant)


async def test_a_delayed_job_is_sent_when_due(
    backends: Backends, agent_server: RunningServer, redis_client: redis.asyncio.Redis
) -> None:
    tenant = credentials(f"job-{uid()}")
    async with serve_job(
        backends, agent_server.port, AGENTMESH_JOB_SWEEP_INTERVAL_S="0.1"
    ) as server:
        job = await server.stub.CreateJob(
            job_pb2.CreateJobRequest(job=_echo(start_delay=duration_pb2.Duration(seconds=1))),
            metadata=tenant,
        )
        job_id = job.name.removeprefix("jobs/")
        assert job.schedule_time.ToMilliseconds() - job.create_time.ToMilliseconds() == 1000
        assert await _queued(redis_client, job_id) == []

        async def sent() -> bool:
            return len(await _queued(redis_client, job_id)) == 1

        await eventually(sent, "the delayed job's message", timeout_s=15)
