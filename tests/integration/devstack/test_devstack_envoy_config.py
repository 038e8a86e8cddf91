"""The Envoy template renders for dev and k8s from the real descriptor set and validates."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import descriptor_pb2

from agentmesh.devstack import paths
from agentmesh.devstack.envoy_config import (
    SERVICE_NAMES,
    Upstream,
    dev_values,
    k8s_values,
    main,
    method_routes,
    otlp_upstream,
    render_envoy_config,
    validate_envoy_config,
)

pytestmark = pytest.mark.integration

PORTS = {"conductor": 50051, "agent": 50052, "job": 50053, "memory": 50054}


def listener(config: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [x for x in config["static_resources"]["listeners"] if x["name"] == name]
    hcm: dict[str, Any] = found["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def routes_by_path(hcm: dict[str, Any]) -> dict[str, dict[str, Any]]:
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    return {r["match"]["path"]: r["route"] for r in routes if "path" in r["match"]}


def test_dev_config_follows_the_descriptor_and_validates(
    descriptor_set: Path, tmp_path: Path
) -> None:
    text = render_envoy_config(dev_values(ports=PORTS, descriptor_path=descriptor_set))
    config = yaml.safe_load(text)
    external = listener(config, "external")
    assert external["codec_type"] == "AUTO"
    filters = [f["name"] for f in external["http_filters"]]
    assert filters[-1] == "envoy.filters.http.router"
    transcoder = next(
        f["typed_config"] for f in external["http_filters"] if "transcoder" in f["name"]
    )
    assert sorted(transcoder["services"]) == sorted(SERVICE_NAMES.values())
    assert transcoder["convert_grpc_status"] is True
    assert transcoder["proto_descriptor"] == str(descriptor_set.resolve())

    # Route policy comes from each method's idempotency_level / streaming flags: an
    # idempotent method has its own retrying route; any other method falls back to the
    # service's prefix route (or its own streaming route), which retries only failures
    # that never reached the service.
    internal = listener(config, "internal")
    by_path = routes_by_path(internal)
    by_prefix = {
        r["match"]["prefix"]: r["route"]
        for r in internal["route_config"]["virtual_hosts"][0]["routes"]
        if "prefix" in r["match"]
    }
    kinds: set[str] = set()
    for full_name in SERVICE_NAMES.values():
        for method in method_routes(descriptor_set, full_name):
            route = by_path.get(method.path) or by_prefix[f"/{full_name}/"]
            retry_on = route["retry_policy"]["retry_on"].split(",")
            if method.idempotent:
                kinds.add("idempotent")
                assert "unavailable" in retry_on
            else:
                kinds.add("other")
                assert "unavailable" not in retry_on
                assert "reset" not in retry_on
            if method.streaming:
                kinds.add("stream")
                assert route["timeout"] == "0s"
                assert "idle_timeout" in route
            else:
                assert route["timeout"] == "30s"
    assert kinds == {"idempotent", "other", "stream"}

    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert set(clusters) == set(SERVICE_NAMES)
    for key, full_name in SERVICE_NAMES.items():
        (check,) = clusters[key]["health_checks"]
        assert check["grpc_health_check"]["service_name"] == full_name
        assert check["no_traffic_interval"] == "3s"
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"

    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    validate_envoy_config(path)


def test_k8s_config_validates(descriptor_set: Path, tmp_path: Path) -> None:
    # Validated with the descriptor at a local path; in the pod it is mounted elsewhere.
    # So are the docs page's files (copied from the image by the pod's init container).
    values = replace(
        k8s_values(
            namespace="agentmesh",
            descriptor_source=descriptor_set,
            descriptor_path=str(descriptor_set),
            cors_allow_origins=["https://app.example.com"],
        ),
        openapi_path=str(paths.openapi_description()),
        docs_dir=str(paths.docs_dir()),
    )
    text = render_envoy_config(values)
    config = yaml.safe_load(text)
    assert "memory-headless.agentmesh.svc.cluster.local" in text
    assert {x["name"] for x in config["static_resources"]["listeners"]} == {
        "external",
        "internal",
        "stats",
    }
    path = tmp_path / "envoy-k8s.yaml"
    path.write_text(text)
    validate_envoy_config(path)


def test_cli_renders_and_validates(descriptor_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.yaml"
    assert main(["--out", str(out), "--descriptor", str(descriptor_set), "--validate"]) == 0
    assert "agentmesh.v1.MemoryService" in out.read_text()


def test_missing_service_in_descriptor_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.binpb"
    empty.write_bytes(descriptor_pb2.FileDescriptorSet().SerializeToString())
    with pytest.raises(LookupError, match="make gen"):
        render_envoy_config(dev_values(ports=PORTS, descriptor_path=empty))


def test_sse_route_reframes_streams_and_changes_nothing_else(descriptor_set: Path) -> None:
    # A client asking for text/event-stream gets the transcoder's config with SSE
    # framing instead of NDJSON, and otherwise the very same settings and route.
    config = yaml.safe_load(
        render_envoy_config(dev_values(ports=PORTS, descriptor_path=descriptor_set))
    )
    external = listener(config, "external")
    name = "envoy.filters.http.grpc_json_transcoder"
    (transcoder,) = [f["typed_config"] for f in external["http_filters"] if f["name"] == name]
    routes = external["route_config"]["virtual_hosts"][0]["routes"]
    sse_route, rest_route = [r for r in routes if r["match"].get("prefix") == "/"][-2:]
    assert sse_route["match"]["headers"] == [
        {"name": "accept", "string_match": {"contains": "text/event-stream"}}
    ]
    assert "headers" not in rest_route["match"]
    assert sse_route["route"] == rest_route["route"]
    override = dict(sse_route["typed_per_filter_config"][name])
    sse_print = override.pop("print_options")
    ndjson_print = dict(transcoder)
    default_print = ndjson_print.pop("print_options")
    assert override == ndjson_print
    assert default_print.pop("stream_newline_delimited") is True
    assert sse_print.pop("stream_sse_style_delimited") is True
    assert sse_print == default_print
    assert (
        sse_route["typed_per_filter_config"]["envoy.filters.http.buffer"]
        == rest_route["typed_per_filter_config"]["envoy.filters.http.buffer"]
    )


def test_a_collector_turns_on_tracing_at_the_edge(descriptor_set: Path, tmp_path: Path) -> None:
    ports = PORTS
    plain = yaml.safe_load(
        render_envoy_config(dev_values(ports=ports, descriptor_path=descriptor_set))
    )
    assert "tracing" not in str(plain)
    text = render_envoy_config(
        dev_values(
            ports=ports, descriptor_path=descriptor_set, otlp_endpoint="http://127.0.0.1:4317"
        )
    )
    config = yaml.safe_load(text)
    for listener in config["static_resources"]["listeners"]:
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        tracing = manager["tracing"]["provider"]["typed_config"]
        assert tracing["service_name"] == "agentmesh-envoy"
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    address = clusters["otlp_collector"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert address["endpoint"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 4317,
    }
    path = tmp_path / "traced.yaml"
    path.write_text(text)
    validate_envoy_config(path)


def test_otlp_endpoints_are_read_as_host_and_port() -> None:
    assert otlp_upstream("http://collector.observability:4317") == Upstream(
        "collector.observability", 4317
    )
    assert otlp_upstream("127.0.0.1:4317") == Upstream("127.0.0.1", 4317)
    assert otlp_upstream(None) is None
    with pytest.raises(ValueError, match="port"):
        otlp_upstream("http://collector")
