"""RPCs that belong to later issues say so: UNIMPLEMENTED naming the missing work."""

from __future__ import annotations

import grpc
import httpx
import pytest

from agentmesh.devstack.stack import DevStack
from agentmesh.v1 import (
    conductor_pb2,
    conductor_pb2_grpc,
    job_pb2,
    job_pb2_grpc,
)


def test_job_rpc_names_the_planned_work(
    envoy_channel: grpc.Channel, auth_metadata: tuple[tuple[str, str], ...]
) -> None:
    stub = job_pb2_grpc.JobServiceStub(envoy_channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetJob(job_pb2.GetJobRequest(name="jobs/j1"), metadata=auth_metadata, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    details = caught.value.details() or ""
    assert "JobService.GetJob" in details
    assert "Job service issue" in details


def test_job_stream_rpc_is_unimplemented(
    envoy_channel: grpc.Channel, auth_metadata: tuple[tuple[str, str], ...]
) -> None:
    stub = job_pb2_grpc.JobServiceStub(envoy_channel)
    stream = stub.WatchJob(
        job_pb2.WatchJobRequest(name="jobs/j1"), metadata=auth_metadata, timeout=10
    )
    with pytest.raises(grpc.RpcError) as caught:
        next(iter(stream))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "JobService.WatchJob" in (caught.value.details() or "")


def test_conductor_rpc_is_unimplemented(
    stack: DevStack, auth_metadata: tuple[tuple[str, str], ...]
) -> None:
    with grpc.insecure_channel(stack.endpoints["conductor"]) as channel:
        stub = conductor_pb2_grpc.ConductorServiceStub(channel)
        stream = stub.Converse(
            conductor_pb2.ConverseRequest(session="sessions/s1"),
            metadata=auth_metadata,
            timeout=10,
        )
        with pytest.raises(grpc.RpcError) as caught:
            next(iter(stream))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_unimplemented_over_json_is_501(http: httpx.Client) -> None:
    response = http.get("/v1/jobs/j1")
    assert response.status_code == 501
    assert "JobService.GetJob" in response.json()["message"]
