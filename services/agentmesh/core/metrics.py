"""Prometheus metrics of the gRPC server and the ``/metrics`` HTTP endpoint.

Metric and label names follow go-grpc-prometheus, so stock dashboards and alerts work:
``grpc_server_started_total``, ``grpc_server_handled_total`` (with ``grpc_code``) and
``grpc_server_handling_seconds``, labelled ``grpc_type``, ``grpc_service``, ``grpc_method``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Histogram, start_http_server

_LABELS: Final = ("grpc_type", "grpc_service", "grpc_method")

GRPC_SERVER_STARTED: Final = Counter(
    "grpc_server_started_total",
    "Total number of RPCs started on the server.",
    _LABELS,
)
GRPC_SERVER_HANDLED: Final = Counter(
    "grpc_server_handled_total",
    "Total number of RPCs completed on the server, regardless of success or failure.",
    (*_LABELS, "grpc_code"),
)
GRPC_SERVER_HANDLING_SECONDS: Final = Histogram(
    "grpc_server_handling_seconds",
    "Histogram of response latency (seconds) of gRPC that had been application-level "
    "handled by the server.",
    _LABELS,
)


class MethodMetrics:
    """Label children of one RPC method, resolved once so a call only increments.

    ``labels()`` hashes and locks on every use; the interceptor keeps one of these per
    method instead, and the per-code ``handled`` children are created on first use.
    """

    __slots__ = ("_handled", "_labels", "_seconds", "_started")

    def __init__(self, grpc_type: str, grpc_service: str, grpc_method: str) -> None:
        self._labels = (grpc_type, grpc_service, grpc_method)
        self._started = GRPC_SERVER_STARTED.labels(*self._labels)
        self._seconds = GRPC_SERVER_HANDLING_SECONDS.labels(*self._labels)
        self._handled: dict[str, Counter] = {}

    def started(self) -> None:
        self._started.inc()

    def handled(self, grpc_code: str, elapsed_s: float) -> None:
        child = self._handled.get(grpc_code)
        if child is None:
            child = self._handled[grpc_code] = GRPC_SERVER_HANDLED.labels(*self._labels, grpc_code)
        child.inc()
        self._seconds.observe(elapsed_s)


@dataclass(frozen=True)
class MetricsServer:
    """A running ``/metrics`` HTTP server (prometheus_client's, on a daemon thread)."""

    port: int
    _httpd: WSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        """Stop serving and release the port; blocks up to one poll interval (0.5 s)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def start_metrics_server(port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serve the default registry on ``http://host:port/metrics``; port 0 picks a free one."""
    httpd, thread = start_http_server(port, addr=host)
    return MetricsServer(port=httpd.server_port, _httpd=httpd, _thread=thread)
