"""Background turns through a real Job service and a real worker process (Dramatiq over
Redis), with real Memory and Agent services and PostgreSQL: the Conductor creates the
job as the caller, streams ``job_created`` and the job's changes, then the job's result
as the turn's answer (stored in Memory); the job is the caller's, watchable directly; a
retried ``request_id`` replays the turn without a second job; an agent whose card says
``long_running`` runs as a job unasked; a background turn interrupted by a newer message
cancels its job. Without a Job service a background turn is
FAILED_PRECONDITION."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2

from agentmesh.agent.agents.echo import echo_agent
from agentmesh.agent.app import build_agent
from agentmesh.agent.settings import AgentSettings
from agentmesh.core.server import RunningServer, start_server
from agentmesh.v1 import common_pb2, conductor_pb2, job_pb2, memory_pb2
from component.agent_helpers import FIXTURES, agent_settings
from component.conductor_helpers import ConductorStub, converse, kinds, serve_conductor, text
from component.conftest import Backends, Metadata, credentials
from component.job_helpers import JobStub, serve_job, worker_process
from component.memory_helpers import Stub, error_info, eventually, uid, unique


@dataclass(frozen=True)
class Mesh:
    conductor: ConductorStub
    jobs: JobStub
    agent_port: int
    release: Path


@pytest.fixture(scope="module")
async def mesh(backends: Backends, memory_server: RunningServer) -> AsyncIterator[Mesh]:
    work = Path(tempfile.mkdtemp(prefix="agentmesh-background-"))
    # The built-in echo agent, the same graph on a card that says its runs are long, and
    # the slow test agent (its second step waits for the release file).
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.syspath_prepend(str(FIXTURES))
    monkeypatch.setenv("AGENTMESH_TEST_COUNTER_FILE", str(work / "counter"))
    monkeypatch.setenv("AGENTMESH_TEST_RELEASE_FILE", str(work / "release"))
    slow = importlib.import_module("agentmesh_test_agents").slow_agent
    echo = echo_agent()
    patient = dataclasses.replace(
        echo, card=dataclasses.replace(echo.card, agent_id="patient-echo", long_running=True)
    )
    settings = agent_settings(memory_port=memory_server.port)
    agent = await start_server(
        settings, await build_agent(settings, AgentSettings(), definitions=[echo, patient, slow])
    )
    async with (
        _stopping(agent),
        serve_job(backends, agent.port, AGENTMESH_JOB_WATCH_POLL_S="0.5") as jobs,
        worker_process(backends, agent.port, work, f"w-{uid(6)}"),
        serve_conductor(
            backends,
            memory_server.port,
            agent.port,
            AGENTMESH_CONDUCTOR_WATCH_POLL_S="0.5",
            AGENTMESH_JOB_ADDR=f"127.0.0.1:{jobs.running.port}",
        ) as conductor,
    ):
        yield Mesh(conductor, jobs.stub, agent.port, work / "release")
    monkeypatch.undo()


@contextlib.asynccontextmanager
async def _stopping(running: RunningServer) -> AsyncIterator[RunningServer]:
    try:
        yield running
    finally:
        await running.stop(0)


async def _read(call: Any) -> conductor_pb2.ConverseEvent:
    """The stream's next event (it must have one)."""
    event = await call.read()
    assert isinstance(event, conductor_pb2.ConverseEvent), "the stream ended"
    return event


def _tenant() -> Metadata:
    return credentials(f"bg-{uid()}")


async def test_a_background_turn_runs_as_the_callers_job_and_answers_with_its_result(
    mesh: Mesh, memory: Stub
) -> None:
    tenant = _tenant()
    session = f"sessions/{unique()}"
    request: dict[str, Any] = {
        "session": session,
        "create_session": True,
        "agent": "agents/echo",
        "parts": text("hello from a job"),
        "background": True,
        "request_id": f"req-{uid()}",
    }
    events = await converse(mesh.conductor, tenant, timeout_s=90, **request)
    found = kinds(events)
    assert found[:2] == ["routing", "job_created"]
    assert found[-1] == "final"
    assert set(found[2:-1]) == {"job_event"}
    created = events[1].job_created
    assert created.job.startswith("jobs/")
    assert created.snapshot.session == session
    assert created.snapshot.agent == "agents/echo"
    states = [e.job_event.job.state for e in events[2:-1]]
    assert states[-1] == job_pb2.JOB_STATE_SUCCEEDED
    final = events[-1].final
    assert [p.text for p in final.parts] == ["hello from a job"]
    # The answer is stored in Memory after the user's message.
    stored = await memory.ListMessages(
        memory_pb2.ListMessagesRequest(parent=session), metadata=tenant
    )
    assert [(m.role, m.parts[0].text) for m in stored.messages] == [
        (common_pb2.ROLE_USER, "hello from a job"),
        (common_pb2.ROLE_ASSISTANT, "hello from a job"),
    ]
    assert stored.messages[1].name == final.message
    # The job is the caller's (its credential was forwarded): it can watch it itself;
    # another tenant cannot see it.
    job = await mesh.jobs.GetJob(job_pb2.GetJobRequest(name=created.job), metadata=tenant)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await mesh.jobs.GetJob(job_pb2.GetJobRequest(name=created.job), metadata=_tenant())
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
    # A retry replays the turn: the same events, no second job.
    assert await converse(mesh.conductor, tenant, **request) == events
    listed = await mesh.jobs.ListJobs(
        job_pb2.ListJobsRequest(filter=f'session = "{session}"'), metadata=tenant
    )
    assert [j.name for j in listed.jobs] == [created.job]


async def test_without_a_job_service_a_background_turn_is_refused(
    backends: Backends, memory_server: RunningServer, mesh: Mesh
) -> None:
    async with serve_conductor(backends, memory_server.port, mesh.agent_port) as conductor:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await converse(
                conductor,
                _tenant(),
                session=f"sessions/{unique()}",
                create_session=True,
                agent="agents/echo",
                parts=text("later"),
                background=True,
            )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(refused.value).reason == "NO_JOB_SERVICE"


async def test_an_agent_whose_card_says_long_running_runs_as_a_job_unasked(mesh: Mesh) -> None:
    events = await converse(
        mesh.conductor,
        _tenant(),
        timeout_s=90,
        session=f"sessions/{unique()}",
        create_session=True,
        agent="agents/patient-echo",
        parts=text("take your time"),
    )
    assert kinds(events)[:2] == ["routing", "job_created"]
    assert kinds(events)[-1] == "final"
    assert events[1].job_created.snapshot.agent == "agents/patient-echo"
    assert [p.text for p in events[-1].final.parts] == ["take your time"]


async def test_an_interrupted_background_turn_cancels_its_job(mesh: Mesh) -> None:
    mesh.release.unlink(missing_ok=True)
    tenant = _tenant()
    session = f"sessions/{unique()}"
    call = mesh.conductor.Converse(
        conductor_pb2.ConverseRequest(
            session=session,
            create_session=True,
            agent="agents/slow-test",
            parts=text("long"),
            background=True,
        ),
        metadata=tenant,
    )
    async with asyncio.timeout(60):
        seen = [await _read(call) for _ in range(2)]
    assert kinds(seen) == ["routing", "job_created"]
    job = seen[1].job_created.job

    async def running() -> bool:
        got = await mesh.jobs.GetJob(job_pb2.GetJobRequest(name=job), metadata=tenant)
        return got.state == job_pb2.JOB_STATE_RUNNING

    await eventually(running, "the job running", 60.0)
    now = await converse(
        mesh.conductor,
        tenant,
        session=session,
        agent="agents/echo",
        parts=text("now"),
        busy_policy=conductor_pb2.BUSY_POLICY_INTERRUPT,
    )
    assert kinds(now)[-1] == "final"
    async with asyncio.timeout(60):
        last = await _read(call)
        while last.WhichOneof("event") != "error":
            last = await _read(call)
    assert last.error.code == code_pb2.ABORTED

    async def cancelled() -> bool:
        got = await mesh.jobs.GetJob(job_pb2.GetJobRequest(name=job), metadata=tenant)
        return got.state in (job_pb2.JOB_STATE_CANCELLING, job_pb2.JOB_STATE_CANCELLED)

    await eventually(cancelled, "the job cancelled", 60.0)
    mesh.release.touch()  # the run may go on to its step's end; the job stays cancelled

    async def ended() -> bool:
        got = await mesh.jobs.GetJob(job_pb2.GetJobRequest(name=job), metadata=tenant)
        return got.state == job_pb2.JOB_STATE_CANCELLED

    await eventually(ended, "the job CANCELLED", 60.0)
