"""Cross-cutting concerns of worker processes, as Dramatiq middleware: logs and metrics.

The worker-side twin of the gRPC server interceptor: each message is logged with its
actor and message id, counted and timed under ``agentmesh_worker_*`` metrics served
on the worker's ``/metrics`` port.
"""

from __future__ import annotations

import time
from typing import Any, Final

import dramatiq
import structlog
from dramatiq.middleware import Middleware
from prometheus_client import Counter, Histogram

from agentmesh.core.logging import configure_logging
from agentmesh.core.metrics import MetricsServer, start_metrics_server
from agentmesh.core.settings import Settings
from agentmesh.core.tracing import configure_tracing

MESSAGES: Final = Counter(
    "agentmesh_worker_messages_total",
    "Messages processed by Dramatiq workers, by actor and outcome.",
    ("actor", "outcome"),
)
MESSAGE_SECONDS: Final = Histogram(
    "agentmesh_worker_message_seconds",
    "Time spent processing one message, by actor.",
    ("actor",),
)

_log = structlog.get_logger("agentmesh.worker")


class WorkerObservability(Middleware):
    """Structured logs and Prometheus metrics for every processed message."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._metrics: MetricsServer | None = None
        self._started: dict[str, float] = {}

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        # The first hook in a worker process, right after Dramatiq pointed sys.stdout at
        # the pipe to its supervisor: JSON from here on (the supervisor's own logging,
        # inherited at fork, would write past that pipe). Before other middleware's
        # after_worker_boot, so their lines (AsyncIO's "Starting event loop...") are JSON.
        configure_logging(self._settings)
        configure_tracing(self._settings)

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self._settings.metrics_port:
            self._metrics = start_metrics_server(
                self._settings.metrics_port, self._settings.grpc_host
            )
        _log.info("worker started", queues=sorted(broker.get_declared_queues()))

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self._metrics is not None:
            self._metrics.close()
        _log.info("worker stopping")

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self._started[message.message_id] = time.perf_counter()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        started = self._started.pop(message.message_id, None)
        outcome = "error" if exception is not None else "ok"
        MESSAGES.labels(message.actor_name, outcome).inc()
        if started is not None:
            MESSAGE_SECONDS.labels(message.actor_name).observe(time.perf_counter() - started)
        if exception is not None:
            _log.error(
                "message failed",
                actor=message.actor_name,
                message_id=message.message_id,
                error=repr(exception),
            )
        else:
            _log.info("message processed", actor=message.actor_name, message_id=message.message_id)

    after_skip_message = after_process_message
