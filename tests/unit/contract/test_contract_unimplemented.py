"""fill_unimplemented: every RPC not written yet raises Unimplemented naming the plan."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from agentmesh.core.contract import fill_unimplemented
from agentmesh.core.errors import Unimplemented
from agentmesh.v1 import job_pb2, job_pb2_grpc

SERVICE = job_pb2.DESCRIPTOR.services_by_name["JobService"]


class RetryRpcs:
    """An RPC group mixin: a class the servicer inherits an RPC from."""

    async def RetryJob(self, request: Any, context: Any) -> job_pb2.Job:  # noqa: N802
        return job_pb2.Job(name="jobs/from-a-mixin")


@fill_unimplemented(SERVICE, {"GetJob": "job reads", "*": "durable jobs"})
class PartialJobServicer(RetryRpcs, job_pb2_grpc.JobServiceServicer):
    async def CancelJob(self, request: Any, context: Any) -> job_pb2.Job:  # noqa: N802
        return job_pb2.Job(name="jobs/written-by-hand")


async def test_defined_methods_are_left_alone() -> None:
    servicer: Any = PartialJobServicer()  # type: ignore[abstract]
    job = await servicer.CancelJob(None, None)
    assert job.name == "jobs/written-by-hand"
    inherited = await servicer.RetryJob(None, None)
    assert inherited.name == "jobs/from-a-mixin"


async def test_unary_gap_names_its_plan() -> None:
    servicer: Any = PartialJobServicer()  # type: ignore[abstract]
    with pytest.raises(Unimplemented, match=r"JobService\.GetJob.*job reads"):
        await servicer.GetJob(None, None)
    with pytest.raises(Unimplemented, match=r"JobService\.CreateJob.*durable jobs"):
        await servicer.CreateJob(None, None)


async def test_stream_gap_is_an_async_generator_that_raises() -> None:
    servicer: Any = PartialJobServicer()  # type: ignore[abstract]
    stream = servicer.WatchJob(None, None)
    assert inspect.isasyncgen(stream)
    with pytest.raises(Unimplemented, match="WatchJob"):
        await anext(stream)


def test_every_rpc_of_the_contract_is_covered() -> None:
    for method in SERVICE.methods:
        assert callable(getattr(PartialJobServicer, method.name))
