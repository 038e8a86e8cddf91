"""The grpc.aio server every service runs: interceptors, health, reflection (dev), drain.

A service describes itself with a :class:`ServiceSpec` and calls :func:`serve` from its
entry point; tests call :func:`start_server` with the same spec and stop it themselves.

Health has two meanings, under different ``grpc.health.v1`` service names:

- **readiness**: ``""`` and each full service name (``agentmesh.v1.MemoryService``)
  follow the dependency probes; Envoy's health checks and the Kubernetes readiness
  probe ask these;
- **liveness**: :data:`LIVENESS` is ``SERVING`` from start to drain whatever the
  dependencies do. Its answer comes from a handler on the event loop, so a timely
  answer is itself the proof that the loop is responsive; the Kubernetes liveness
  probe asks it, so a database outage never restarts a pod (ADR 0015).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from agentmesh.core.auth import Authenticator
from agentmesh.core.interceptors import InterceptingRegistrar, ServerInterceptor
from agentmesh.core.logging import configure_logging
from agentmesh.core.metrics import MetricsServer, start_metrics_server
from agentmesh.core.settings import Settings
from agentmesh.core.tracing import configure_tracing, shutdown_tracing

Probe = Callable[[], Awaitable[None]]
"""A dependency check: returns when the dependency answers, raises when it does not."""

LIVENESS: Final = "agentmesh.liveness"
"""The health service name for liveness: SERVING while the process answers at all,
independent of the probes (the Kubernetes ``livenessProbe`` asks for it)."""

_OVERALL: Final = ""  # the health service name that means "the whole server"
_SERVING: Final = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING: Final = health_pb2.HealthCheckResponse.NOT_SERVING
STOP_STEP_S: Final = 30.0
"""Longest each step of a stop may take past the drain grace (the server's own stop,
each ``on_stop`` hook) before the stop goes on without it."""


@dataclass
class ServiceSpec:
    """What a service contributes to the shared server."""

    name: str
    """Short service name, e.g. ``memory``; used in logs."""

    service_names: Sequence[str]
    """Full gRPC service names, e.g. ``["agentmesh.v1.MemoryService"]``, for health and
    reflection."""

    register: Callable[[grpc.aio.Server], None]
    """Adds the servicers to the server (``add_XServicer_to_server``)."""

    probes: Sequence[Probe] = ()
    """Dependency checks; the server reports SERVING only while all of them pass."""

    on_stop: Sequence[Callable[[], Awaitable[None]]] = ()
    """Run after the server has drained, in order: close pools, clients."""


def server_options(settings: Settings) -> list[tuple[str, Any]]:
    """Channel arguments for the server: message limits, keepalive, exclusive port."""
    keepalive_ms = settings.keepalive_time_s * 1000
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Accept client pings as often as our own channels send them (channels.py uses
        # the same keepalive_time_s); below this the server would answer GOAWAY
        # "too_many_pings" and drop the connection.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", keepalive_ms),
        ("grpc.http2.max_ping_strikes", 2),
        # gRPC sets SO_REUSEPORT by default, which lets a second process bind the same
        # port silently and steal half the connections; fail loudly instead.
        ("grpc.so_reuseport", 0),
    ]


async def _run_probe(probe: Probe) -> None:
    # A Probe returns any awaitable; TaskGroup.create_task wants a coroutine.
    await probe()


class RunningServer:
    """A started server: its port, its health, and how to stop it gracefully."""

    def __init__(
        self,
        *,
        server: grpc.aio.Server,
        port: int,
        spec: ServiceSpec,
        settings: Settings,
        health: HealthServicer,
        metrics: MetricsServer | None,
    ) -> None:
        self.port = port
        """The bound gRPC port (the chosen one when ``grpc_port`` was 0)."""
        self.metrics_port = None if metrics is None else metrics.port
        """The bound ``/metrics`` port, or None when metrics are disabled."""
        self._server = server
        self._spec = spec
        self._settings = settings
        self._health = health
        self._metrics = metrics
        self._serving: bool | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._stopped = False
        # Bound per server, so it writes where logging was configured when the server
        # was built (the process's stdout, or a test's buffer).
        self._log: Any = structlog.get_logger("agentmesh.server").bind()

    async def check_health(self) -> bool:
        """Run every probe once and publish the result as readiness (``""`` and the
        service names; never :data:`LIVENESS`); returns whether all passed."""
        healthy = await self._probe()
        if healthy != self._serving:
            status = _SERVING if healthy else _NOT_SERVING
            for name in (_OVERALL, *self._spec.service_names):
                await self._health.set(name, status)
            log = self._log.info if healthy else self._log.warning
            log("health changed", serving=healthy)
            self._serving = healthy
        return healthy

    async def _probe(self) -> bool:
        if not self._spec.probes:
            return True
        try:
            async with asyncio.timeout(self._settings.health_probe_timeout_s):
                # A TaskGroup, unlike gather, cancels the other probes when one fails.
                async with asyncio.TaskGroup() as group:
                    for probe in self._spec.probes:
                        group.create_task(_run_probe(probe))
        except Exception as exc:
            # Only the first failure of a streak is worth a line; repeats add nothing.
            if self._serving is not False:
                cause = exc.exceptions[0] if isinstance(exc, ExceptionGroup) else exc
                self._log.warning("health probe failed", error=repr(cause))
            return False
        return True

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.health_interval_s)
            await self.check_health()

    def _started(self, address: str) -> None:
        """Announce the server and keep its health following the probes from now on."""
        self._health_task = asyncio.create_task(
            self._health_loop(), name=f"{self._spec.name}-health"
        )
        self._log.info("server started", address=address, metrics_port=self.metrics_port)

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain and stop: NOT_SERVING everywhere, finish in-flight RPCs, run ``on_stop``.

        ``grace_s`` defaults to ``settings.drain_grace_s``; RPCs still running after it
        are cancelled. Calling stop twice is harmless.
        """
        if self._stopped:
            return
        self._stopped = True
        grace = self._settings.drain_grace_s if grace_s is None else grace_s
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
        # Tell load balancers first, so new calls go elsewhere while these finish.
        await self._health.enter_graceful_shutdown()
        self._log.info("server draining", grace_s=grace)
        # Bounded, as every step below: a stop that hangs (a handler or a background
        # task that swallows its cancellation) must not keep the process up for ever.
        try:
            async with asyncio.timeout(grace + STOP_STEP_S):
                await self._server.stop(grace)
        except TimeoutError:
            self._log.error("server did not stop in time; going on", bound_s=grace + STOP_STEP_S)
        for hook in self._spec.on_stop:
            try:
                async with asyncio.timeout(STOP_STEP_S):
                    await hook()
            except TimeoutError:
                self._log.error("on_stop hook overran; going on", hook=repr(hook))
            except Exception:
                self._log.exception("on_stop hook failed", hook=repr(hook))
        if self._metrics is not None:
            await asyncio.to_thread(self._metrics.close)
        self._log.info("server stopped")


async def start_server(settings: Settings, spec: ServiceSpec) -> RunningServer:
    """Build, bind and start the server for ``spec``; returns once it accepts calls.

    One interceptor, :class:`ServerInterceptor`, does tracing, auth, errors and metrics;
    it is applied to every handler as it is registered (:class:`InterceptingRegistrar`),
    not through grpc.aio's per-call interceptor chain. Reflection alone is registered on
    the bare server (it needs the real ``grpc.aio.Server`` and, like health, takes no
    credential and gets no span). Readiness starts from one probe round run before
    returning, then follows the probes every ``health_interval_s``; liveness
    (:data:`LIVENESS`) is SERVING from the start.
    Needs auth settings (:meth:`Settings.require_auth`).
    """
    authenticator = Authenticator.from_settings(settings)
    server = grpc.aio.server(options=server_options(settings))
    registrar = InterceptingRegistrar(server, ServerInterceptor(authenticator))
    spec.register(cast("grpc.aio.Server", registrar))
    health_servicer = HealthServicer()
    # Liveness follows nothing but the process itself: set once, never by the probes.
    await health_servicer.set(LIVENESS, _SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registrar)
    registrar.finish()
    if settings.env == "dev":
        # Reflection in dev only: in production it tells anyone who can connect every
        # method there is; clients there use the published descriptor set.
        reflection.enable_server_reflection(
            [*spec.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    port = server.add_insecure_port(address)
    metrics = (
        start_metrics_server(settings.metrics_port, settings.grpc_host)
        if settings.metrics_port
        else None
    )
    try:
        await server.start()
        running = RunningServer(
            server=server,
            port=port,
            spec=spec,
            settings=settings,
            health=health_servicer,
            metrics=metrics,
        )
        await running.check_health()
    except BaseException:
        await server.stop(None)
        if metrics is not None:
            metrics.close()
        raise
    running._started(f"{settings.grpc_host}:{port}")
    return running


async def serve(settings: Settings, spec: ServiceSpec) -> None:
    """Run a service process until SIGTERM/SIGINT, then drain for ``drain_grace_s``.

    Also configures logging and tracing for the process, which tests skip by calling
    :func:`start_server` directly.
    """
    configure_logging(settings)
    configure_tracing(settings)
    running = await start_server(settings, spec)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await running.stop(settings.drain_grace_s)
        shutdown_tracing()
