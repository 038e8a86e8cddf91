"""The bench's own clients of the Memory service, and the percentiles of their timings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import grpc

from agentmesh.bench import h2load
from agentmesh.bench.suite import JsonDict
from agentmesh.v1 import memory_pb2_grpc

Stub: TypeAlias = "memory_pb2_grpc.MemoryServiceAsyncStub"
"""A string: the AsyncStub exists only in the generated type stubs, not at run time."""


def sync_stub(address: str) -> tuple[grpc.Channel, memory_pb2_grpc.MemoryServiceStub]:
    channel = grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])
    return channel, memory_pb2_grpc.MemoryServiceStub(channel)


def aio_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])


def aio_stub(channel: grpc.aio.Channel) -> Stub:
    # mypy-protobuf types the runtime stub as the AsyncStub on an aio channel.
    stub: Stub = memory_pb2_grpc.MemoryServiceStub(channel)  # type: ignore[assignment]
    return stub


def percentiles_ms(latencies_s: Sequence[float]) -> JsonDict:
    """Client-side latencies (seconds) as count, p50/p90/p99, max and mean in ms."""
    values = sorted(x * 1000.0 for x in latencies_s)
    if not values:
        return {}
    return {
        "count": len(values),
        "p50": round(h2load.percentile(values, 50), 3),
        "p90": round(h2load.percentile(values, 90), 3),
        "p99": round(h2load.percentile(values, 99), 3),
        "max": round(values[-1], 3),
        "mean": round(sum(values) / len(values), 3),
    }
