"""OpenTelemetry tracing: the process TracerProvider and the gRPC interceptors.

Spans are always created (so logs carry a trace id and context propagates across
services) but only exported when an OTLP endpoint is configured.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.instrumentation.grpc import filters as grpc_filters
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from agentmesh.core.settings import Settings


def configure_tracing(settings: Settings) -> None:
    """Install the global TracerProvider (``service.name`` = ``agentmesh-<service>``).

    OpenTelemetry allows the global provider to be set once per process; later calls
    are ignored with a warning by the SDK, so call this once, at start.
    """
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: f"agentmesh-{settings.service}"})
    )
    if settings.otlp_endpoint:
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint))
        )
    trace.set_tracer_provider(provider)


def shutdown_tracing() -> None:
    """Flush and stop span export; called once the server has drained."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


def server_interceptors() -> Sequence[grpc.aio.ServerInterceptor[Any, Any]]:
    """The OpenTelemetry server interceptor; health and reflection calls are not traced
    (probes every second would drown the real traffic)."""
    untraced = grpc_filters.any_of(
        grpc_filters.health_check(), grpc_filters.service_prefix("grpc.reflection.")
    )
    # opentelemetry-instrumentation-grpc has no annotations on its factories.
    return [aio_server_interceptor(filter_=grpc_filters.negate(untraced))]


def client_interceptors() -> Sequence[grpc.aio.ClientInterceptor]:
    """The OpenTelemetry client interceptors (one per call type), injecting trace context."""
    return list(aio_client_interceptors())
