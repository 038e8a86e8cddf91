"""The mesh's one client retry policy, and the methods it applies to, read from the contract.

A method is retried on ``UNAVAILABLE`` when the contract says a repeat is harmless: its
``option idempotency_level`` is ``NO_SIDE_EFFECTS`` or ``IDEMPOTENT`` (the same option
drives Envoy's route retries), or its request carries a top-level ``request_id`` that
the caller always fills in (a create the service deduplicates). Only unary methods:
a stream that fails after its first event resumes by sequence instead.

Light to import on purpose (the protobuf modules and the standard library only): the
``agentmesh`` command and the SDK use it, and neither loads the services' runtime.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from typing import Any, Final

from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.descriptor_pb2 import MethodOptions

from agentmesh.v1 import agent_pb2, conductor_pb2, job_pb2, memory_pb2

RETRY_POLICY: Final = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
"""Up to 3 retries, each after a random wait of at most 0.1 s, 0.2 s, 0.4 s (gRPC's
exponential backoff with full jitter), on UNAVAILABLE only. grpcio channels take it as
a service config; clients without built-in retries follow :func:`backoff_s`."""

RETRYABLE_LEVELS: Final = frozenset({MethodOptions.NO_SIDE_EFFECTS, MethodOptions.IDEMPOTENT})
"""``idempotency_level`` values that make a method safe to repeat."""

REQUEST_ID_FIELD: Final = "request_id"
"""The top-level request field that makes a create idempotent (the service keeps the
first result under it)."""

SERVICES: Final[tuple[ServiceDescriptor, ...]] = tuple(
    service
    for module in (agent_pb2, conductor_pb2, job_pb2, memory_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
)
"""Every service of the contract, from the generated descriptors."""

Method = tuple[str, str]
"""``(full service name, method name)``, as a gRPC service config names a method."""


def _unary(method: MethodDescriptor) -> bool:
    return not (method.client_streaming or method.server_streaming)


def idempotent_methods(services: Iterable[ServiceDescriptor] = SERVICES) -> tuple[Method, ...]:
    """Unary methods the contract declares ``NO_SIDE_EFFECTS`` or ``IDEMPOTENT``."""
    return tuple(
        (service.full_name, method.name)
        for service in services
        for method in service.methods
        if _unary(method) and method.GetOptions().idempotency_level in RETRYABLE_LEVELS
    )


def keyed_methods(services: Iterable[ServiceDescriptor] = SERVICES) -> tuple[Method, ...]:
    """Unary methods whose request has a top-level ``request_id``: idempotent only when
    the caller fills it in, so a client lists them only if it always does."""
    return tuple(
        (service.full_name, method.name)
        for service in services
        for method in service.methods
        if _unary(method)
        and method.GetOptions().idempotency_level not in RETRYABLE_LEVELS
        and REQUEST_ID_FIELD in method.input_type.fields_by_name
    )


def route(method: Method) -> str:
    """The HTTP/2 path of a method: ``/agentmesh.v1.JobService/GetJob``."""
    return f"/{method[0]}/{method[1]}"


def service_config(methods: Iterable[Method]) -> str:
    """gRPC service config JSON retrying ``(service, method)`` pairs on UNAVAILABLE.

    An empty method name (``("agentmesh.v1.MemoryService", "")``) covers every method of
    the service.
    """
    names = [
        {"service": service, "method": method} if method else {"service": service}
        for service, method in methods
    ]
    config: dict[str, Any] = {"methodConfig": []}
    if names:
        config["methodConfig"].append({"name": names, "retryPolicy": RETRY_POLICY})
    return json.dumps(config)


def _seconds(duration: object) -> float:
    text = str(duration)
    if not text.endswith("s"):
        raise ValueError(f"not a gRPC duration: {text!r}")
    return float(text[:-1])


MAX_ATTEMPTS: Final = int(str(RETRY_POLICY["maxAttempts"]))
"""Attempts of one call, the first included."""


def backoff_s(retry: int, *, uniform: Callable[[float, float], float] = random.uniform) -> float:
    """The wait before retry number ``retry`` (1 for the first retry), as gRPC computes
    it: a uniform draw in ``[0, min(initial × multiplier^(retry-1), max)]``."""
    if retry < 1:
        raise ValueError(f"retries are numbered from 1, not {retry}")
    initial = _seconds(RETRY_POLICY["initialBackoff"])
    ceiling = _seconds(RETRY_POLICY["maxBackoff"])
    multiplier = float(str(RETRY_POLICY["backoffMultiplier"]))
    return uniform(0.0, min(initial * multiplier ** (retry - 1), ceiling))
