"""Building blocks of the dashboards: selectors, PromQL helpers, panels (docs/adr/0032).

Queries use only two Grafana placeholders, ``$__rate_interval`` and ``${datasource}``
(in the data-source reference, never in an expression), so a test can evaluate every
expression against a real Prometheus by substituting a window for the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

#: The window placeholder Grafana fills from the scrape interval and the zoom level.
RATE_WINDOW: Final = "$__rate_interval"
DATASOURCE: Final = model.DataSourceRef(type_val="prometheus", uid="${datasource}")

#: The agentmesh API only: health checks and reflection are counted too (docs/telemetry.md).
MESH: Final = 'grpc_service=~"agentmesh[.]v1[.].+"'
#: Codes that are the server's fault (the tracing interceptor marks the same ones ERROR).
SERVER_ERRORS: Final = (
    'grpc_code=~"UNKNOWN|DEADLINE_EXCEEDED|UNIMPLEMENTED|INTERNAL|UNAVAILABLE|DATA_LOSS"'
)
#: The Envoy clusters of the four services (envoy/envoy.yaml.j2).
CLUSTERS: Final = 'envoy_cluster_name=~"conductor|agent|job|memory"'

MEMORY_SERVICE: Final = 'grpc_service="agentmesh.v1.MemoryService"'
MEMORY_WRITES: Final = (
    'grpc_method=~"CreateMemory|BatchCreateMemories|ImportMemories|UpdateMemory|DeleteMemory'
    "|AppendMessages|CreateDecision|PutArtifact|UpdateWorkingMemory|PutCheckpoint"
    '|PutCheckpointWrites|PutStoreItem"'
)
MEMORY_SEARCHES: Final = 'grpc_method=~"SearchMemories|SearchStoreItems"'
EMBED: Final = f'{MEMORY_SERVICE}, grpc_method="EmbedTexts"'
OK: Final = 'grpc_code="OK"'


def rate(metric: str, selector: str = "") -> str:
    """``rate(metric{selector}[$__rate_interval])``."""
    matchers = f"{{{selector}}}" if selector else ""
    return f"rate({metric}{matchers}[{RATE_WINDOW}])"


def quantile(q: float, metric: str, by: str, selector: str = "") -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) ({rate(metric + '_bucket', selector)}))"


def error_ratio(by: str) -> str:
    """Server errors over all calls; 0 (not empty) for a group with calls and no error."""
    calls = f"sum by ({by}) ({rate('grpc_server_handled_total', MESH)})"
    errors = f"sum by ({by}) ({rate('grpc_server_handled_total', f'{MESH}, {SERVER_ERRORS}')})"
    return f"({errors} or {calls} * 0) / {calls}"


@dataclass(frozen=True)
class Query:
    """One panel query: its PromQL and the legend of its series."""

    expr: str
    legend: str = ""


def targets(queries: Sequence[Query]) -> list[prometheus.Dataquery]:
    return [
        prometheus.Dataquery()
        .expr(q.expr)
        .legend_format(q.legend or "__auto")
        .ref_id(chr(ord("A") + i))
        .datasource(DATASOURCE)
        for i, q in enumerate(queries)
    ]


def series(
    title: str,
    description: str,
    unit: str,
    *queries: Query,
    width: int = 12,
    stacked: bool = False,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(8)
        .span(width)
        .fill_opacity(10)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
    )
    if stacked:
        panel = panel.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    for target in targets(queries):
        panel = panel.with_target(target)
    return panel


def stat_panel(title: str, description: str, unit: str, query: Query, width: int = 6) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(4)
        .span(width)
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.VALUE)
    )
    for target in targets([query]):
        panel = panel.with_target(target)
    return panel


def new_dashboard(uid: str, title: str, description: str) -> dashboard.Dashboard:
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["agentmesh"])
        .editable()
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .with_variable(
            dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
    )
