"""Jobs run by real Dramatiq worker processes against a real Agent process: a job runs
to SUCCEEDED and is watched there; one waits for a human and resumes; a running job is
cancelled and its worker stops it; a worker killed mid-job (SIGKILL) loses nothing (the
job is picked up again when the lease expires and succeeds once, its completed step not
run again); a stopping worker (SIGTERM) hands its job back; an agent's refusal fails a
job at once (the dead-letter view) and an outage is retried with backoff."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2

from agentmesh.core.server import RunningServer
from agentmesh.v1 import common_pb2, job_pb2, memory_pb2
from component.agent_helpers import agent_process
from component.conftest import Backends, credentials
from component.job_helpers import (
    JobServer,
    kill_group,
    serve_job,
    wait_state,
    watch_until_end,
    worker_process,
)
from component.memory_helpers import Stub, eventually, free_port, uid

LEASE = {"AGENTMESH_JOB_LEASE_S": "1.5"}
"""Short leases, so a dead worker's job moves on within seconds."""


@dataclass(frozen=True)
class Mesh:
    jobs: JobServer
    agent_port: int
    work: Path
    counter: Path
    release: Path


@pytest.fixture(scope="module")
async def mesh(
    memory_server: RunningServer, backends: Backends, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Mesh]:
    work = tmp_path_factory.mktemp("jobs")
    counter, release = work / "counter", work / "release"
    port = free_port()
    async with (
        agent_process(
            memory_server.port,
            work,
            "agent",
            port=port,
            AGENTMESH_AGENT_GRAPHS="agentmesh_test_agents:slow_agent",
            AGENTMESH_TEST_COUNTER_FILE=str(counter),
            AGENTMESH_TEST_RELEASE_FILE=str(release),
        ),
        serve_job(
            backends,
            port,
            AGENTMESH_JOB_SWEEP_INTERVAL_S="0.2",
            AGENTMESH_JOB_WATCH_POLL_S="0.5",
            AGENTMESH_JOB_REDISPATCH_AFTER_S="3",
            **LEASE,
        ) as jobs,
    ):
        yield Mesh(jobs, port, work, counter, release)


def _job(agent: str, text: str = "", **fields: object) -> job_pb2.CreateJobRequest:
    parts = [common_pb2.Part(text=text)] if text else []
    return job_pb2.CreateJobRequest(job=job_pb2.Job(agent=agent, parts=parts, **fields))  # type: ignore[arg-type]


async def test_a_job_runs_to_success_and_a_watch_sees_every_step(
    mesh: Mesh, backends: Backends
) -> None:
    tenant = credentials(f"jobw-{uid()}")
    stub = mesh.jobs.stub
    async with worker_process(backends, mesh.agent_port, mesh.work, f"w-{uid(6)}", **LEASE):
        job = await stub.CreateJob(_job("agents/echo", "hello jobs"), metadata=tenant)
        events = await watch_until_end(stub, job.name, tenant)
    states = [e.job.state for e in events]
    assert states[0] in (job_pb2.JOB_STATE_PENDING, job_pb2.JOB_STATE_RUNNING)
    assert job_pb2.JOB_STATE_RUNNING in states
    assert states[-1] == job_pb2.JOB_STATE_SUCCEEDED
    assert [e.sequence for e in events] == sorted({e.sequence for e in events})
    done = events[-1].job
    assert done.result["text"] == "hello jobs"
    assert done.progress.percent == 100
    assert done.attempt == 1
    assert done.HasField("start_time")
    assert done.HasField("end_time")
    assert not done.HasField("error")
    # A finished job is the same read back, and no longer in the active list.
    got = await stub.GetJob(job_pb2.GetJobRequest(name=job.name), metadata=tenant)
    assert got == done
    succeeded = await stub.ListJobs(
        job_pb2.ListJobsRequest(filter="state = SUCCEEDED"), metadata=tenant
    )
    assert [j.name for j in succeeded.jobs] == [job.name]


async def test_a_job_waits_for_a_human_and_resumes(mesh: Mesh, backends: Backends) -> None:
    tenant = credentials(f"jobw-{uid()}")
    stub = mesh.jobs.stub
    async with worker_process(backends, mesh.agent_port, mesh.work, f"w-{uid(6)}", **LEASE):
        action = struct_pb2.Struct()
        action.update({"action": "refund order 77"})
        job = await stub.CreateJob(_job("agents/approval", input=action), metadata=tenant)
        waiting = await wait_state(stub, job.name, tenant, job_pb2.JOB_STATE_INPUT_REQUIRED)
        assert waiting.interrupt.id
        assert waiting.interrupt.thread_id == waiting.thread_id
        with pytest.raises(grpc.aio.AioRpcError) as wrong:
            await stub.ResumeJob(
                job_pb2.ResumeJobRequest(
                    name=job.name,
                    resume=common_pb2.ResumeInput(
                        interrupt_id="not-it", answer=struct_pb2.Value(string_value="yes")
                    ),
                ),
                metadata=tenant,
            )
        assert wrong.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        resumed = await stub.ResumeJob(
            job_pb2.ResumeJobRequest(
                name=job.name,
                resume=common_pb2.ResumeInput(
                    interrupt_id=waiting.interrupt.id, answer=struct_pb2.Value(string_value="yes")
                ),
            ),
            metadata=tenant,
        )
        assert resumed.state == job_pb2.JOB_STATE_RUNNING
        done = await wait_state(
            stub, job.name, tenant, job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED
        )
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    assert done.result["approved"] is True
    assert done.result["action"] == "refund order 77"
    assert done.attempt == 1


async def test_cancelling_a_running_job_stops_its_worker(mesh: Mesh, backends: Backends) -> None:
    tenant = credentials(f"jobw-{uid()}")
    stub = mesh.jobs.stub
    mesh.release.unlink(missing_ok=True)
    mesh.counter.write_text("")
    async with worker_process(backends, mesh.agent_port, mesh.work, f"w-{uid(6)}", **LEASE):
        job = await stub.CreateJob(_job("agents/slow-test", "go"), metadata=tenant)

        async def first_step_done() -> bool:
            return mesh.counter.read_text().splitlines() == ["first"]

        await eventually(first_step_done, "the first step", timeout_s=30)
        running = await wait_state(stub, job.name, tenant, job_pb2.JOB_STATE_RUNNING)
        cancelled = await stub.CancelJob(
            job_pb2.CancelJobRequest(name=job.name, reason="no longer needed"), metadata=tenant
        )
        # The intent is stored at once; the worker confirms.
        assert cancelled.state in (job_pb2.JOB_STATE_CANCELLING, job_pb2.JOB_STATE_CANCELLED)
        assert cancelled.sequence > running.sequence
        events = await watch_until_end(stub, job.name, tenant, timeout_s=30)
        assert events[-1].job.state == job_pb2.JOB_STATE_CANCELLED
        assert events[-1].job.error.code == grpc.StatusCode.CANCELLED.value[0]
        mesh.release.touch()  # had the graph gone on, its second step would run now
        await asyncio.sleep(1.0)
    assert mesh.counter.read_text().splitlines() == ["first"]
    final = await stub.GetJob(job_pb2.GetJobRequest(name=job.name), metadata=tenant)
    assert final.state == job_pb2.JOB_STATE_CANCELLED
    assert not final.HasField("result")


async def test_a_killed_workers_job_is_picked_up_again_and_succeeds_once(
    mesh: Mesh, backends: Backends
) -> None:
    tenant = credentials(f"jobw-{uid()}")
    stub = mesh.jobs.stub
    mesh.release.unlink(missing_ok=True)
    mesh.counter.write_text("")
    async with worker_process(
        backends, mesh.agent_port, mesh.work, f"doomed-{uid(6)}", **LEASE
    ) as doomed:
        job = await stub.CreateJob(_job("agents/slow-test", "go"), metadata=tenant)

        async def first_step_done() -> bool:
            return mesh.counter.read_text().splitlines() == ["first"]

        await eventually(first_step_done, "the first step", timeout_s=30)
        running = await wait_state(stub, job.name, tenant, job_pb2.JOB_STATE_RUNNING)
        assert running.attempt == 1
        kill_group(doomed)
    mesh.release.touch()
    async with worker_process(backends, mesh.agent_port, mesh.work, f"heir-{uid(6)}", **LEASE):
        done = await wait_state(
            stub, job.name, tenant, job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED
        )
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    assert done.attempt == 2  # the lost attempt counts
    assert done.result["done"] is True
    # The step that completed before the kill did not run again.
    assert mesh.counter.read_text().splitlines() == ["first", "second"]
    events = [
        e
        async for e in stub.WatchJob(
            job_pb2.WatchJobRequest(name=job.name, after_sequence=1), metadata=tenant
        )
    ]
    assert sum(e.job.state == job_pb2.JOB_STATE_SUCCEEDED for e in events) == 1
    assert any(e.job.error.message and "lease" in e.job.error.message for e in events)


async def test_a_stopping_worker_hands_its_job_back(mesh: Mesh, backends: Backends) -> None:
    tenant = credentials(f"jobw-{uid()}")
    stub = mesh.jobs.stub
    mesh.release.unlink(missing_ok=True)
    mesh.counter.write_text("")
    async with worker_process(
        backends,
        mesh.agent_port,
        mesh.work,
        f"leaving-{uid(6)}",
        AGENTMESH_WORKER_SHUTDOWN_GRACE_S="0.5",
        **LEASE,
    ) as leaving:
        job = await stub.CreateJob(_job("agents/slow-test", "go"), metadata=tenant)

        async def first_step_done() -> bool:
            return mesh.counter.read_text().splitlines() == ["first"]

        await eventually(first_step_done, "the first step", timeout_s=30)
        code = await asyncio.to_thread(leaving.stop, 30.0)
        assert code == 0, leaving.log_tail()
    handed = await stub.GetJob(job_pb2.GetJobRequest(name=job.name), metadata=tenant)
    assert handed.state == job_pb2.JOB_STATE_PENDING
    assert handed.attempt == 1  # handing back is not a failure
    mesh.release.touch()
    async with worker_process(backends, mesh.agent_port, mesh.work, f"next-{uid(6)}", **LEASE):
        done = await wait_state(
            stub, job.name, tenant, job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED
        )
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    assert done.attempt == 1
    assert mesh.counter.read_text().splitlines() == ["first", "second"]


async def test_a_refusal_fails_at_once_and_an_outage_is_retried(
    mesh: Mesh, backends: Backends, memory_server: RunningServer
) -> None:
    tenant = credentials(f"jobw-{uid()}")
    stub = mesh.jobs.stub
    async with worker_process(backends, mesh.agent_port, mesh.work, f"w-{uid(6)}", **LEASE):
        # The assistant needs a model this deployment lacks: the same every time.
        refused = await stub.CreateJob(_job("agents/assistant", "hi"), metadata=tenant)
        failed = await wait_state(stub, refused.name, tenant, job_pb2.JOB_STATE_FAILED)
        assert failed.attempt == 1
        assert failed.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert "AGENTMESH_LLM_DEFAULT_MODEL" in failed.error.message
        dead_letters = await stub.ListJobs(
            job_pb2.ListJobsRequest(filter="state = FAILED"), metadata=tenant
        )
        assert [j.name for j in dead_letters.jobs] == [refused.name]

    # An Agent service that is down: the attempt fails UNAVAILABLE and is retried.
    port = free_port()
    # Attempts enough to outlast the Agent process's start on a busy machine (about
    # 40 s of backoff in all), each at most 5 s after the last.
    policy = job_pb2.RetryPolicy(
        max_attempts=10,
        initial_backoff=duration_pb2.Duration(seconds=1),
        max_backoff=duration_pb2.Duration(seconds=5),
    )
    async with serve_job(backends, port, AGENTMESH_JOB_SWEEP_INTERVAL_S="0.2", **LEASE) as jobs:
        # Up while the job is created (CreateJob asks it about the agent), then gone
        # when the job becomes due.
        async with agent_process(memory_server.port, mesh.work, "flaky-agent", port=port):
            job = await jobs.stub.CreateJob(
                _job(
                    "agents/echo",
                    "again",
                    retry_policy=policy,
                    start_delay=duration_pb2.Duration(seconds=2),
                ),
                metadata=tenant,
            )
        async with worker_process(backends, port, mesh.work, f"w-{uid(6)}", **LEASE):

            async def retried() -> bool:
                got = await jobs.stub.GetJob(job_pb2.GetJobRequest(name=job.name), metadata=tenant)
                return got.attempt >= 2

            await eventually(retried, "a retry after the outage", timeout_s=30)
            async with agent_process(memory_server.port, mesh.work, "flaky-agent-back", port=port):
                done = await wait_state(
                    jobs.stub,
                    job.name,
                    tenant,
                    job_pb2.JOB_STATE_SUCCEEDED,
                    job_pb2.JOB_STATE_FAILED,
                )
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    assert done.attempt >= 2
    assert done.result["text"] == "again"


async def test_one_trace_runs_from_the_create_call_through_the_worker_into_the_agent(
    mesh: Mesh, backends: Backends, memory: Stub
) -> None:
    tenant = credentials(f"jobw-{uid()}")
    trace_id = uuid.uuid4().hex
    traced = (*tenant, ("traceparent", f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"))
    name = f"w-{uid(6)}"
    async with worker_process(backends, mesh.agent_port, mesh.work, name, **LEASE) as worker:
        job = await mesh.jobs.stub.CreateJob(_job("agents/echo", "traced"), metadata=traced)
        done = await wait_state(mesh.jobs.stub, job.name, tenant, job_pb2.JOB_STATE_SUCCEEDED)
    job_id = done.name.removeprefix("jobs/")
    worker_lines = [
        json.loads(line)
        for line in worker.log_path.read_text().splitlines()
        if line.startswith("{") and job_id in line
    ]
    assert worker_lines, worker.log_tail()
    # Every line the worker wrote about the job names it and the caller's trace.
    assert all(line.get("job_id") == job_id for line in worker_lines)
    assert {line.get("trace_id") for line in worker_lines} == {trace_id}
    # The agent run the worker drove is in the same trace: its decision (recorded in
    # the background once the run ended) says so.
    found: list[memory_pb2.Decision] = []

    async def recorded() -> bool:
        listed = await memory.ListDecisions(
            memory_pb2.ListDecisionsRequest(filter=f'job = "{job.name}"'), metadata=tenant
        )
        found[:] = listed.decisions
        return bool(found)

    await eventually(recorded, "the run's decision", timeout_s=30)
    assert [d.trace_id for d in found] == [trace_id]
    assert found[0].agent == "agents/echo"


async def test_higher_priority_jobs_drain_first(mesh: Mesh, backends: Backends) -> None:
    tenant = credentials(f"jobw-{uid()}")
    stub = mesh.jobs.stub
    mesh.release.unlink(missing_ok=True)
    mesh.counter.write_text("")
    # One thread: while the slow job holds it, the others wait in the worker's queue.
    async with worker_process(
        backends, mesh.agent_port, mesh.work, f"w-{uid(6)}", AGENTMESH_WORKER_THREADS="1", **LEASE
    ):
        slow = await stub.CreateJob(_job("agents/slow-test", "go"), metadata=tenant)
        await wait_state(stub, slow.name, tenant, job_pb2.JOB_STATE_RUNNING)
        low = [
            await stub.CreateJob(
                _job("agents/echo", f"low {i}", priority=job_pb2.JOB_PRIORITY_LOW), metadata=tenant
            )
            for i in range(2)
        ]
        high = [
            await stub.CreateJob(
                _job("agents/echo", f"high {i}", priority=job_pb2.JOB_PRIORITY_HIGH),
                metadata=tenant,
            )
            for i in range(2)
        ]
        await asyncio.sleep(2.0)  # the worker prefetches the four while its thread is busy
        mesh.release.touch()
        done = [
            await wait_state(stub, job.name, tenant, job_pb2.JOB_STATE_SUCCEEDED)
            for job in [*low, *high]
        ]
    order = sorted(done, key=lambda job: job.start_time.ToNanoseconds())
    assert {job.name for job in order[:2]} == {job.name for job in high}, [
        (job.name, job.priority) for job in order
    ]


async def test_a_cancel_completes_when_the_worker_died(mesh: Mesh, backends: Backends) -> None:
    tenant = credentials(f"jobw-{uid()}")
    stub = mesh.jobs.stub
    mesh.release.unlink(missing_ok=True)
    mesh.counter.write_text("")
    async with worker_process(
        backends, mesh.agent_port, mesh.work, f"doomed-{uid(6)}", **LEASE
    ) as doomed:
        job = await stub.CreateJob(_job("agents/slow-test", "go"), metadata=tenant)
        await wait_state(stub, job.name, tenant, job_pb2.JOB_STATE_RUNNING)
        kill_group(doomed)
        cancelling = await stub.CancelJob(job_pb2.CancelJobRequest(name=job.name), metadata=tenant)
        assert cancelling.state in (job_pb2.JOB_STATE_CANCELLING, job_pb2.JOB_STATE_CANCELLED)
    # No worker will confirm: the sweeper completes the cancel when the lease expires.
    ended = await wait_state(stub, job.name, tenant, job_pb2.JOB_STATE_CANCELLED, timeout_s=30)
    assert ended.error.code == grpc.StatusCode.CANCELLED.value[0]
    assert ended.attempt == 1


async def test_an_attempt_past_the_time_limit_fails(mesh: Mesh, backends: Backends) -> None:
    tenant = credentials(f"jobw-{uid()}")
    stub = mesh.jobs.stub
    mesh.release.unlink(missing_ok=True)
    mesh.counter.write_text("")
    async with worker_process(
        backends,
        mesh.agent_port,
        mesh.work,
        f"w-{uid(6)}",
        AGENTMESH_WORKER_JOB_TIMEOUT_S="2",
        **LEASE,
    ):
        job = await stub.CreateJob(
            _job("agents/slow-test", "go", retry_policy=job_pb2.RetryPolicy(max_attempts=1)),
            metadata=tenant,
        )
        failed = await wait_state(stub, job.name, tenant, job_pb2.JOB_STATE_FAILED, timeout_s=30)
    assert failed.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert failed.attempt == 1
    assert "second" not in mesh.counter.read_text()
