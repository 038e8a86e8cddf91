"""The mesh's Grafana dashboards, as code (grafana-foundation-sdk; docs/adr/0032).

``python -m agentmesh.observability.dashboards --out observability/dashboards`` (what
``make dashboards`` runs) writes one JSON file per dashboard; the files are committed and
a test fails when they differ from what this module generates. Every query uses the
metric names of docs/telemetry.md; panels choose a Prometheus data source through the
``datasource`` variable, so the files import into any Grafana (docs/operations.md).

The mesh-wide dashboards are here, the per-service ones in ``service_boards``, their
building blocks in ``panels``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from agentmesh.observability.panels import (
    CLUSTERS,
    MESH,
    SERVER_ERRORS,
    Query,
    error_ratio,
    new_dashboard,
    quantile,
    rate,
    series,
    stat_panel,
)
from agentmesh.observability.service_boards import agent_runs, jobs, memory


def mesh_overview() -> dashboard.Dashboard:
    """Calls per service and method: rate, server-error ratio, latency p50/p99."""
    handled = "grpc_server_handled_total"
    seconds = "grpc_server_handling_seconds"
    return (
        new_dashboard(
            "agentmesh-mesh",
            "agentmesh / Mesh overview",
            "Every agentmesh.v1 RPC as the services count it (grpc_server_*, health checks"
            " excluded): rate, server-error ratio and latency per service and method.",
        )
        .with_row(dashboard.Row("Whole mesh"))
        .with_panel(
            stat_panel(
                "RPC rate",
                "Calls completed per second.",
                "reqps",
                Query(f"sum({rate(handled, MESH)})"),
            )
        )
        .with_panel(
            stat_panel(
                "Server-error ratio",
                "Calls ending in a server-side code"
                " (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,"
                " DATA_LOSS) over all calls.",
                "percentunit",
                Query(
                    f"(sum({rate(handled, f'{MESH}, {SERVER_ERRORS}')}) or vector(0))"
                    f" / sum({rate(handled, MESH)})"
                ),
            )
        )
        .with_panel(
            stat_panel(
                "Unary p99",
                "99th percentile of unary call latency, all services.",
                "s",
                Query(quantile(0.99, seconds, "grpc_type", f'{MESH}, grpc_type="unary"')),
            )
        )
        .with_panel(
            stat_panel(
                "Streams open",
                "Calls started and not yet finished (mostly server"
                " streams: Converse, WatchJob, StreamAgent).",
                "short",
                Query(
                    f"sum(grpc_server_started_total{{{MESH}}})"
                    f" - sum(grpc_server_handled_total{{{MESH}}})"
                ),
            )
        )
        .with_row(dashboard.Row("Per service"))
        .with_panel(
            series(
                "RPC rate by service",
                "Calls completed per second.",
                "reqps",
                Query(f"sum by (grpc_service) ({rate(handled, MESH)})", "{{grpc_service}}"),
            )
        )
        .with_panel(
            series(
                "Server-error ratio by service",
                "Server-side codes over all calls (0 when a service had calls and no error).",
                "percentunit",
                Query(error_ratio("grpc_service"), "{{grpc_service}}"),
            )
        )
        .with_panel(
            series(
                "Latency p50 / p99 by service",
                "All call types; a stream's latency is its whole life.",
                "s",
                Query(quantile(0.5, seconds, "grpc_service", MESH), "p50 {{grpc_service}}"),
                Query(quantile(0.99, seconds, "grpc_service", MESH), "p99 {{grpc_service}}"),
            )
        )
        .with_panel(
            series(
                "Responses by code",
                "Calls completed per second, by final status.",
                "reqps",
                Query(f"sum by (grpc_code) ({rate(handled, MESH)})", "{{grpc_code}}"),
                stacked=True,
            )
        )
        .with_row(dashboard.Row("Per method"))
        .with_panel(
            series(
                "RPC rate by method",
                "Calls completed per second.",
                "reqps",
                Query(
                    f"sum by (grpc_service, grpc_method) ({rate(handled, MESH)})",
                    "{{grpc_service}}/{{grpc_method}}",
                ),
            )
        )
        .with_panel(
            series(
                "Server-error ratio by method",
                "Server-side codes over all calls.",
                "percentunit",
                Query(error_ratio("grpc_service, grpc_method"), "{{grpc_service}}/{{grpc_method}}"),
            )
        )
        .with_panel(
            series(
                "Latency p50 by method",
                "Median latency per method.",
                "s",
                Query(
                    quantile(0.5, seconds, "grpc_service, grpc_method", MESH),
                    "{{grpc_service}}/{{grpc_method}}",
                ),
            )
        )
        .with_panel(
            series(
                "Latency p99 by method",
                "99th percentile per method.",
                "s",
                Query(
                    quantile(0.99, seconds, "grpc_service, grpc_method", MESH),
                    "{{grpc_service}}/{{grpc_method}}",
                ),
            )
        )
        .with_row(dashboard.Row("Latency SLO (recording rules)"))
        .with_panel(
            series(
                "Slow unary calls (over 500 ms)",
                "Share of the SLO's unary calls"
                " slower than 500 ms; the objective allows 1 % (docs/operations.md).",
                "percentunit",
                Query("grpc_service:grpc_server_slow_calls:ratio_rate5m", "5m {{grpc_service}}"),
                Query("grpc_service:grpc_server_slow_calls:ratio_rate1h", "1h {{grpc_service}}"),
            )
        )
        .with_panel(
            series(
                "Error-budget burn rate (1 h)",
                "How fast the latency budget is spent: 1 spends it in exactly 30 days; 14.4 pages.",
                "short",
                Query(
                    "grpc_service:grpc_server_slow_calls:ratio_rate1h / 0.01", "{{grpc_service}}"
                ),
            )
        )
    )


def envoy() -> dashboard.Dashboard:
    """Envoy's view of the services: healthy hosts, ejections, upstream requests."""
    return (
        new_dashboard(
            "agentmesh-envoy",
            "agentmesh / Envoy upstreams",
            "What Envoy sees of each service cluster: replicas passing its gRPC health"
            " check (NOT_SERVING ones fail it), outlier ejections, upstream requests by"
            " HTTP code, retries and latency; downstream responses at the edge.",
        )
        .with_row(dashboard.Row("Hosts"))
        .with_panel(
            series(
                "Healthy hosts by cluster",
                "Replicas passing the health check, and all replicas Envoy knows.",
                "short",
                Query(
                    f"sum by (envoy_cluster_name) (envoy_cluster_membership_healthy{{{CLUSTERS}}})",
                    "healthy {{envoy_cluster_name}}",
                ),
                Query(
                    f"sum by (envoy_cluster_name) (envoy_cluster_membership_total{{{CLUSTERS}}})",
                    "total {{envoy_cluster_name}}",
                ),
            )
        )
        .with_panel(
            series(
                "Health check failures",
                "Failed active health checks per second.",
                "ops",
                Query(
                    f"sum by (envoy_cluster_name) (rate(envoy_cluster_health_check_failure"
                    f"{{{CLUSTERS}}}[$__rate_interval]))",
                    "{{envoy_cluster_name}}",
                ),
            )
        )
        .with_panel(
            series(
                "Outlier ejections",
                "Hosts ejected now, and ejections enforced per second.",
                "short",
                Query(
                    f"sum by (envoy_cluster_name) (envoy_cluster_outlier_detection"
                    f"_ejections_active{{{CLUSTERS}}})",
                    "active {{envoy_cluster_name}}",
                ),
                Query(
                    f"sum by (envoy_cluster_name) (rate(envoy_cluster_outlier_detection"
                    f"_ejections_enforced_total{{{CLUSTERS}}}[$__rate_interval]))",
                    "enforced/s {{envoy_cluster_name}}",
                ),
            )
        )
        .with_panel(
            series(
                "Retries",
                "Upstream retries per second (idempotent methods on"
                " unavailable/reset; any method on connect failure).",
                "ops",
                Query(
                    f"sum by (envoy_cluster_name) (rate(envoy_cluster_upstream_rq_retry"
                    f"{{{CLUSTERS}}}[$__rate_interval]))",
                    "{{envoy_cluster_name}}",
                ),
            )
        )
        .with_row(dashboard.Row("Requests"))
        .with_panel(
            series(
                "Upstream requests by code",
                "Per cluster and HTTP status (a gRPC error"
                " is a 200 with grpc-status; 503 is no healthy upstream or a reset).",
                "reqps",
                Query(
                    f"sum by (envoy_cluster_name, envoy_response_code) "
                    f"(rate(envoy_cluster_upstream_rq{{{CLUSTERS}}}[$__rate_interval]))",
                    "{{envoy_cluster_name}} {{envoy_response_code}}",
                ),
            )
        )
        .with_panel(
            series(
                "Upstream latency p99",
                "Envoy's time to the upstream's response headers, per cluster.",
                "ms",
                Query(
                    quantile(
                        0.99, "envoy_cluster_upstream_rq_time", "envoy_cluster_name", CLUSTERS
                    ),
                    "{{envoy_cluster_name}}",
                ),
            )
        )
        .with_panel(
            series(
                "Edge responses by class",
                "Responses of the external listener per second, by HTTP status class.",
                "reqps",
                Query(
                    "sum by (envoy_response_code_class) (rate(envoy_http_downstream_rq_xx"
                    '{envoy_http_conn_manager_prefix="external"}[$__rate_interval]))',
                    "{{envoy_response_code_class}}xx",
                ),
                stacked=True,
            )
        )
        .with_panel(
            series(
                "Requests in flight",
                "Active upstream requests per cluster.",
                "short",
                Query(
                    f"sum by (envoy_cluster_name) (envoy_cluster_upstream_rq_active{{{CLUSTERS}}})",
                    "{{envoy_cluster_name}}",
                ),
            )
        )
    )


#: File stem → builder; `python -m agentmesh.observability.dashboards` writes `<stem>.json`.
DASHBOARDS: Final[Mapping[str, Callable[[], dashboard.Dashboard]]] = {
    "mesh-overview": mesh_overview,
    "memory": memory,
    "agent-runs": agent_runs,
    "jobs": jobs,
    "envoy-upstreams": envoy,
}


def render(builder: dashboard.Dashboard) -> str:
    """The dashboard as Grafana JSON: panel ids numbered in order, keys sorted."""
    built = builder.build()
    for number, panel in enumerate(built.panels or [], start=1):
        panel.id_val = number
    document: dict[str, Any] = json.loads(json.dumps(built, cls=JSONEncoder))
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_all() -> dict[str, str]:
    """File name → JSON text of every dashboard."""
    return {f"{stem}.json": render(build()) for stem, build in DASHBOARDS.items()}


def panel_queries(document: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) of every query of a dashboard's JSON, rows included."""
    for panel in document.get("panels", []):
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                yield inner.get("title", ""), target["expr"]


def write_all(out: Path) -> list[Path]:
    """Write every dashboard into ``out`` (created) and remove stale ``*.json`` files."""
    out.mkdir(parents=True, exist_ok=True)
    rendered = render_all()
    for stale in out.glob("*.json"):
        if stale.name not in rendered:
            stale.unlink()
    written = []
    for name, text in rendered.items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agentmesh.observability.dashboards",
        description="Write the Grafana dashboards of agentmesh as JSON files.",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to write into")
    args = parser.parse_args(argv)
    for path in write_all(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
