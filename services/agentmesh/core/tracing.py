"""OpenTelemetry tracing: the process TracerProvider, the gRPC client interceptors, and
the database and Redis instrumentations.

Every call gets a span context (so logs carry a trace id and context propagates
across services); spans are recorded and exported only when an OTLP endpoint is
configured, otherwise they are non-recording (sampler ALWAYS_OFF). Server spans are
made by ``agentmesh.core.interceptors.ServerInterceptor`` itself (see why there).
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from agentmesh.core.settings import Settings


def configure_tracing(settings: Settings) -> None:
    """Install the global TracerProvider (``service.name`` = ``agentmesh-<service>``).

    OpenTelemetry allows the global provider to be set once per process; later calls
    are ignored with a warning by the SDK, so call this once, at start.
    """
    # With nowhere to send spans, recording them is pure cost (~60 µs per call here):
    # ALWAYS_OFF still gives every call a trace id (logged, propagated downstream with
    # the "not sampled" flag), but its spans are non-recording no-ops.
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: f"agentmesh-{settings.service}"}),
        sampler=None if settings.otlp_endpoint else ALWAYS_OFF,
    )
    if settings.otlp_endpoint:
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint))
        )
    trace.set_tracer_provider(provider)
    if settings.otlp_endpoint:
        _instrument_clients()


def _instrument_clients() -> None:
    """Database and Redis spans (the kept OpenTelemetry instrumentations), children of
    whatever span is current: a statement or a broker command joins the call's trace.

    Only when spans are exported: the instrumentations wrap every query and command,
    a cost for nothing without a collector. Statements are recorded without their
    parameters (asyncpg sends them apart), so no tenant data reaches the spans.
    """
    # Imported here: a process that exports nothing never loads them.
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor  # noqa: PLC0415
    from opentelemetry.instrumentation.redis import RedisInstrumentor  # noqa: PLC0415

    for instrumentor in (AsyncPGInstrumentor(), RedisInstrumentor()):
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()


def shutdown_tracing() -> None:
    """Flush and stop span export; called once the server has drained."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


def client_interceptors() -> Sequence[grpc.aio.ClientInterceptor]:
    """The OpenTelemetry client interceptors (one per call type), injecting trace context."""
    return list(aio_client_interceptors())


def current_traceparent() -> str:
    """The W3C ``traceparent`` of the current span ("" when nothing is traced), for
    work that continues the trace elsewhere later (a queued job's message)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent", "")


def context_of(traceparent: str) -> Context | None:
    """The OpenTelemetry context a ``traceparent`` names, to start a span in (None for
    "")."""
    return propagate.extract({"traceparent": traceparent}) if traceparent else None
