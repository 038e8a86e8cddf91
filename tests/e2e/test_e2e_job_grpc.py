"""The Job API over native gRPC through Envoy's external listener (what a backend uses),
with the devstack's worker running the jobs."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agentmesh.core.auth import mint_token
from agentmesh.devstack.stack import DevStack
from agentmesh.v1 import common_pb2, job_pb2, job_pb2_grpc

Metadata = tuple[tuple[str, str], ...]
TIMEOUT_S = 10.0
WATCH_TIMEOUT_S = 60.0
"""Deadline of a whole watch: the job's wait for the worker on a loaded 2-core box."""


@pytest.fixture
def jobs(envoy_channel: grpc.Channel) -> job_pb2_grpc.JobServiceStub:
    return job_pb2_grpc.JobServiceStub(envoy_channel)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def watch(
    jobs: job_pb2_grpc.JobServiceStub, name: str, metadata: Metadata, after: int = 0
) -> list[job_pb2.JobEvent]:
    request = job_pb2.WatchJobRequest(name=name, after_sequence=after)
    return list(jobs.WatchJob(request, metadata=metadata, timeout=WATCH_TIMEOUT_S))


def detail_types(error: grpc.RpcError) -> set[str]:
    """The full names of the `google.rpc.Status` details in the error's trailers."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status in the trailers"
    return {d.TypeName() for d in status.details}


def test_a_job_created_over_grpc_is_run_and_watched_to_succeeded(
    jobs: job_pb2_grpc.JobServiceStub, auth_metadata: Metadata
) -> None:
    job_id = new_id("grpc")
    labels = {"via": "grpc", "run": job_id}
    created = jobs.CreateJob(
        job_pb2.CreateJobRequest(
            job_id=job_id,
            request_id=str(uuid.uuid4()),
            job=job_pb2.Job(
                agent="agents/echo",
                parts=[common_pb2.Part(text="hello over grpc")],
                labels=labels,
                priority=job_pb2.JOB_PRIORITY_LOW,
            ),
        ),
        metadata=auth_metadata,
        timeout=TIMEOUT_S,
    )
    assert created.name == f"jobs/{job_id}"
    assert created.state == job_pb2.JOB_STATE_PENDING

    events = watch(jobs, created.name, auth_metadata)
    assert [e.sequence for e in events] == sorted({e.sequence for e in events})
    final = events[-1].job
    assert final.state == job_pb2.JOB_STATE_SUCCEEDED
    assert final.result["text"] == "hello over grpc"
    assert final.priority == job_pb2.JOB_PRIORITY_LOW

    got = jobs.GetJob(job_pb2.GetJobRequest(name=created.name), metadata=auth_metadata)
    assert got == final

    listed = jobs.ListJobs(
        job_pb2.ListJobsRequest(filter=f'labels.run = "{job_id}" AND state = SUCCEEDED'),
        metadata=auth_metadata,
        timeout=TIMEOUT_S,
    )
    assert [j.name for j in listed.jobs] == [created.name]

    with pytest.raises(grpc.RpcError) as caught:
        jobs.CancelJob(
            job_pb2.CancelJobRequest(name=created.name), metadata=auth_metadata, timeout=TIMEOUT_S
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_details_pb2.PreconditionFailure.DESCRIPTOR.full_name in detail_types(caught.value)


def test_an_approval_job_is_resumed_over_grpc(
    jobs: job_pb2_grpc.JobServiceStub, auth_metadata: Metadata
) -> None:
    job = job_pb2.Job(agent="agents/approval")
    job.input.update({"action": "refund order 9"})
    created = jobs.CreateJob(
        job_pb2.CreateJobRequest(job_id=new_id("approve"), job=job),
        metadata=auth_metadata,
        timeout=TIMEOUT_S,
    )
    stream = jobs.WatchJob(
        job_pb2.WatchJobRequest(name=created.name), metadata=auth_metadata, timeout=WATCH_TIMEOUT_S
    )
    waiting = next(e for e in stream if e.job.state == job_pb2.JOB_STATE_INPUT_REQUIRED)
    stream.cancel()  # type: ignore[no-untyped-call]  # the job waits for a human: its watch would stay open
    interrupt = waiting.job.interrupt
    answers = interrupt.value.struct_value["answers"]
    assert isinstance(answers, struct_pb2.ListValue)
    assert list(answers) == ["yes", "no"]

    resumed = jobs.ResumeJob(
        job_pb2.ResumeJobRequest(
            name=created.name,
            resume=common_pb2.ResumeInput(
                interrupt_id=interrupt.id, answer=struct_pb2.Value(string_value="no")
            ),
        ),
        metadata=auth_metadata,
        timeout=TIMEOUT_S,
    )
    assert resumed.state == job_pb2.JOB_STATE_RUNNING

    events = watch(jobs, created.name, auth_metadata, after=waiting.sequence)
    assert events[0].sequence == waiting.sequence + 1
    final = events[-1].job
    assert final.state == job_pb2.JOB_STATE_SUCCEEDED
    assert final.result["approved"] is False


def test_another_tenants_job_is_not_found_over_grpc(
    stack: DevStack, jobs: job_pb2_grpc.JobServiceStub, auth_metadata: Metadata
) -> None:
    created = jobs.CreateJob(
        job_pb2.CreateJobRequest(
            job_id=new_id("mine"),
            job=job_pb2.Job(agent="agents/echo", parts=[common_pb2.Part(text="mine")]),
        ),
        metadata=auth_metadata,
        timeout=TIMEOUT_S,
    )
    other: Metadata = (("authorization", f"Bearer {mint_token(stack.secret, 'globex')}"),)
    with pytest.raises(grpc.RpcError) as caught:
        jobs.GetJob(job_pb2.GetJobRequest(name=created.name), metadata=other, timeout=TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_details_pb2.ResourceInfo.DESCRIPTOR.full_name in detail_types(caught.value)
    with pytest.raises(grpc.RpcError) as caught:
        watch(jobs, created.name, other)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
