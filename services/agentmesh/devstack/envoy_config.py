"""Render Envoy's static v3 configuration from the one template in `envoy/`.

The same template and the same code render the dev config (endpoints on 127.0.0.1,
`DevStack`) and the Kubernetes config (endpoints are headless-Service DNS names); only
the values differ. Per-method routing comes from the proto descriptor set itself, so the
proto stays the single source of truth for what may be retried:

- a method whose `idempotency_level` option is NO_SIDE_EFFECTS or IDEMPOTENT gets a route
  that retries on UNAVAILABLE, resets and connect failures, with backoff;
- any other method only retries failures that provably never reached the service
  (connect failure, HTTP/2 REFUSED_STREAM), so no side effect can run twice;
- a streaming method (server or client streaming) has no overall timeout (`0s`, it is a
  long-lived watch/stream) but an idle timeout; a unary method has a finite timeout, and
  a shorter `grpc-timeout` sent by the client is honoured.

CLI:

    python -m agentmesh.devstack.envoy_config --out envoy.yaml [--profile dev|k8s] ...
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final, Literal

import jinja2
from google.protobuf import descriptor_pb2

from agentmesh.devstack import paths
from agentmesh.devstack._proc import find_executable
from agentmesh.devstack.openapi_schemas import http_rule

PACKAGE: Final = "agentmesh.v1"
#: Service key (process / cluster name) → fully qualified gRPC service name.
SERVICE_NAMES: Final[Mapping[str, str]] = {
    "conductor": f"{PACKAGE}.ConductorService",
    "agent": f"{PACKAGE}.AgentService",
    "job": f"{PACKAGE}.JobService",
    "memory": f"{PACKAGE}.MemoryService",
}
#: Header that routes `grpc.health.v1.Health/*` on the internal listener to one service's
#: cluster: the health service has the same path for every service, so the path alone
#: cannot pick the cluster. Used by the stack's readiness wait and by operators.
HEALTH_ROUTE_HEADER: Final = "x-agentmesh-service"
MIB: Final = 1024 * 1024
K8S_DOCS_DIR: Final = "/etc/envoy/docs"
"""Where the Envoy pod's init container puts the OpenAPI description and the docs page."""

Profile = Literal["dev", "k8s"]
_IDEMPOTENT_LEVELS: Final = (
    descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
    descriptor_pb2.MethodOptions.IDEMPOTENT,
)


@dataclass(frozen=True)
class Upstream:
    """Where one service's replicas are: resolved with STRICT_DNS, every address is a host."""

    host: str
    port: int


@dataclass(frozen=True)
class MethodRoute:
    """Routing facts about one RPC, read from its descriptor."""

    path: str
    """The gRPC path, `/agentmesh.v1.XService/Method` (what the router sees after transcoding)."""
    idempotent: bool
    """`idempotency_level` is NO_SIDE_EFFECTS or IDEMPOTENT: safe to retry on UNAVAILABLE."""
    streaming: bool
    """Server or client streaming: no overall timeout, an idle timeout instead."""


@dataclass(frozen=True)
class EnvoyValues:
    """Everything that differs between deployments; the template holds the rest."""

    upstreams: Mapping[str, Upstream]
    """Service key (`memory`, ...) → address of its replicas (127.0.0.1 in dev, DNS in k8s)."""
    descriptor_path: str
    """The FileDescriptorSet as Envoy sees it (its transcoder loads this path)."""
    more_hosts: Mapping[str, Sequence[Upstream]] = field(default_factory=dict)
    """Service key → further replicas at addresses of their own (`make dev --replicas`:
    one port per replica on 127.0.0.1; Kubernetes finds every replica through DNS)."""
    descriptor_source: Path | None = None
    """A local copy of that descriptor set to read method options from, when Envoy's
    path is not readable here (k8s: the file is mounted into the Envoy pod).
    Defaults to `descriptor_path`."""
    listen_host: str = "127.0.0.1"
    """Address of the external and internal listeners (0.0.0.0 in a pod)."""
    external_port: int = 8080
    """gRPC, HTTP/1.1 JSON and h2c JSON on one port."""
    internal_port: int = 8081
    """Plain gRPC (HTTP/2) for service-to-service calls: no CORS, no transcoding."""
    admin_port: int = 9901
    """Admin interface, bound to 127.0.0.1 only (it can stop Envoy)."""
    stats_port: int | None = None
    """If set, a listener on `listen_host` that exposes only the admin's `/ready` and
    `/stats/prometheus` (k8s probes and scraping), never the rest of the admin API."""
    cors_allow_origins: Sequence[str] = ("*",)
    """Browser origins allowed by CORS, exact matches; `*` allows any origin (dev)."""
    unary_timeout_s: float = 30.0
    """Route timeout of unary RPCs (a shorter client `grpc-timeout` wins)."""
    stream_idle_timeout_s: float = 300.0
    """A stream with no frames in either direction for this long is reset."""
    connect_timeout_s: float = 1.0
    max_request_body_bytes: int = 4 * MIB
    """Largest transcoded JSON request body (413 above); matches gRPC's 4 MiB default."""
    max_response_body_bytes: int = 16 * MIB
    """Largest unary response body the transcoder buffers to convert to JSON."""
    num_retries: int = 3
    retry_base_interval_s: float = 0.05
    retry_max_interval_s: float = 1.0
    health_check_interval_s: float = 1.0
    health_check_timeout_s: float = 1.0
    no_traffic_interval_s: float = 3.0
    """Health-check interval while a cluster carries no traffic. Envoy's default is 60 s,
    so a replica that failed the first check would stay out for a minute."""
    dns_lookup_family: Literal["V4_ONLY", "V4_PREFERRED", "AUTO", "ALL"] = "V4_ONLY"
    dns_refresh_rate_s: float = 5.0
    access_log: bool = True
    """JSON access log on stdout."""
    openapi_path: str | None = None
    """The OpenAPI description (`gen/openapi/agentmesh.json`) as Envoy sees it, served at
    `/openapi.json`; None serves neither it nor the docs page."""
    docs_dir: str | None = None
    """The docs page's directory (`envoy/docs`) as Envoy sees it, served at `/docs/`."""
    max_docs_file_bytes: int = 4 * MIB
    """Largest file Envoy answers from memory (Swagger UI's bundle is ~1.7 MB)."""
    otlp_endpoint: Upstream | None = None
    """An OTLP/gRPC collector: Envoy then traces every request on both listeners (a
    span per hop, W3C `traceparent` to the upstream) and exports its spans there. None:
    no tracing at the edge; `traceparent` still passes through as a header."""

    def docs_files(self) -> list[tuple[str, str, str]]:
        """(HTTP path, file as Envoy sees it, media type) of every file served at the edge."""
        if not self.openapi_path or not self.docs_dir:
            return []
        ui = f"{self.docs_dir}/swagger-ui"
        return [
            ("/openapi.json", self.openapi_path, "application/json"),
            ("/docs/", f"{self.docs_dir}/index.html", "text/html; charset=utf-8"),
            ("/docs/init.js", f"{self.docs_dir}/init.js", "text/javascript; charset=utf-8"),
            ("/docs/swagger-ui-bundle.js", f"{ui}/swagger-ui-bundle.js", "text/javascript"),
            ("/docs/swagger-ui.css", f"{ui}/swagger-ui.css", "text/css"),
        ]


def otlp_upstream(endpoint: str | None) -> Upstream | None:
    """The collector of an OTLP endpoint setting (`http://host:4317`, `host:4317`)."""
    if not endpoint:
        return None
    address = endpoint.split("://", 1)[-1].rstrip("/")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"OTLP endpoint {endpoint!r} is not host:port or a URL with a port")
    return Upstream(host.strip("[]"), int(port))


def dev_values(
    *,
    ports: Mapping[str, int],
    descriptor_path: Path,
    more_ports: Mapping[str, Sequence[int]] | None = None,
    external_port: int = 8080,
    internal_port: int = 8081,
    admin_port: int = 9901,
    cors_allow_origins: Sequence[str] = ("*",),
    otlp_endpoint: str | None = None,
) -> EnvoyValues:
    """Values for one machine: every service on 127.0.0.1 at `ports[service]`."""
    return EnvoyValues(
        upstreams={svc: Upstream("127.0.0.1", ports[svc]) for svc in SERVICE_NAMES},
        more_hosts={
            svc: [Upstream("127.0.0.1", port) for port in extra]
            for svc, extra in (more_ports or {}).items()
        },
        descriptor_path=str(descriptor_path.resolve()),
        external_port=external_port,
        internal_port=internal_port,
        admin_port=admin_port,
        cors_allow_origins=tuple(cors_allow_origins),
        openapi_path=str(paths.openapi_description()),
        docs_dir=str(paths.docs_dir()),
        otlp_endpoint=otlp_upstream(otlp_endpoint),
    )


def k8s_values(
    *,
    namespace: str,
    descriptor_source: Path,
    descriptor_path: str = "/etc/envoy/descriptors/agentmesh.binpb",
    service_port: int = 50051,
    cors_allow_origins: Sequence[str] = (),
) -> EnvoyValues:
    """Values for the Envoy pod: replicas found through headless Services.

    A headless Service (`clusterIP: None`) resolves to every ready pod IP, so STRICT_DNS
    sees each replica and balances per request; a ClusterIP Service would pin each HTTP/2
    connection to one pod.
    """
    return EnvoyValues(
        upstreams={
            svc: Upstream(f"{svc}-headless.{namespace}.svc.cluster.local", service_port)
            for svc in SERVICE_NAMES
        },
        descriptor_path=descriptor_path,
        descriptor_source=descriptor_source,
        listen_host="0.0.0.0",  # a pod's listeners must be reachable from other pods
        stats_port=9902,
        cors_allow_origins=tuple(cors_allow_origins),
        health_check_interval_s=2.0,
        no_traffic_interval_s=5.0,
        dns_lookup_family="V4_PREFERRED",
        # Copied from the agentmesh image by the Envoy pod's init container.
        openapi_path=f"{K8S_DOCS_DIR}/openapi.json",
        docs_dir=K8S_DOCS_DIR,
    )


def _template_regex(template: str) -> str:
    """A `google.api.http` path template as a regex over the request path (RE2)."""
    out = []
    for piece in re.split(r"(\{[^}]*\})", template):
        if piece.startswith("{"):
            pattern = piece[1:-1].split("=", 1)[1] if "=" in piece else "*"
            out.append(
                "/".join("[^/:]+" if seg == "*" else re.escape(seg) for seg in pattern.split("/"))
            )
        else:
            out.append(re.escape(piece))
    return "^" + "".join(out) + "$"


def rest_paths(descriptor_set: Path) -> list[tuple[str, list[str]]]:
    """(path regex, the HTTP methods bound to it) of every JSON path of the API.

    Envoy answers any other method on such a path with 405 and an `allow` header, as
    HTTP asks, instead of the transcoder's 404 for a path it cannot map.
    """
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    verbs: dict[str, list[str]] = {}
    for file in fds.file:
        if file.package != PACKAGE:
            continue
        for svc in file.service:
            for method in svc.method:
                rule = http_rule(method)
                if rule is None:
                    continue
                for binding in [rule, *rule.additional_bindings]:
                    kind = binding.WhichOneof("pattern")
                    if kind is None or kind == "custom":
                        continue
                    regex = _template_regex(getattr(binding, kind))
                    verbs.setdefault(regex, []).append(kind.upper())
    return sorted((regex, sorted(set(methods))) for regex, methods in verbs.items())


def method_routes(descriptor_set: Path, service: str) -> list[MethodRoute]:
    """The methods of `service` (fully qualified) with their retry/timeout facts."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    for file in fds.file:
        for svc in file.service:
            full_name = f"{file.package}.{svc.name}" if file.package else svc.name
            if full_name != service:
                continue
            return [
                MethodRoute(
                    path=f"/{full_name}/{method.name}",
                    idempotent=method.options.idempotency_level in _IDEMPOTENT_LEVELS,
                    streaming=method.server_streaming or method.client_streaming,
                )
                for method in svc.method
            ]
    raise LookupError(
        f"service {service} is not in the descriptor set {descriptor_set}; run `make gen`"
    )


def render_envoy_config(values: EnvoyValues, template: Path | None = None) -> str:
    """Render the Envoy YAML for `values` from `envoy/envoy.yaml.j2`."""
    source = values.descriptor_source or Path(values.descriptor_path)
    if not source.is_file():
        raise FileNotFoundError(f"descriptor set {source} does not exist; run `make gen`")
    if not values.cors_allow_origins:
        raise ValueError("cors_allow_origins is empty: list the web origins (or '*' in dev)")
    services = [
        {
            "key": key,
            "full_name": full_name,
            "upstream": values.upstreams[key],
            "more_hosts": list(values.more_hosts.get(key, ())),
            "methods": [m for m in method_routes(source, full_name) if m.idempotent or m.streaming],
        }
        for key, full_name in SERVICE_NAMES.items()
    ]
    template_path = template or paths.envoy_template()
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_path.parent),
        undefined=jinja2.StrictUndefined,  # a missing value fails rendering, not Envoy
        keep_trailing_newline=True,
        autoescape=False,  # YAML, not HTML
    )
    env.filters["duration"] = _duration
    return env.get_template(template_path.name).render(
        v=values,
        services=services,
        health_route_header=HEALTH_ROUTE_HEADER,
        docs_files=values.docs_files(),
        rest_paths=rest_paths(source),
    )


def validate_envoy_config(config_path: Path, timeout_s: float = 60.0) -> None:
    """`envoy --mode validate`: parses the config and builds every filter, offline."""
    result = subprocess.run(
        [str(find_executable("envoy")), "--mode", "validate", "-c", str(config_path)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if result.returncode != 0:
        raise ValueError(f"envoy rejected {config_path}:\n{result.stdout}{result.stderr}".strip())


def _duration(seconds: float) -> str:
    """Seconds → a protobuf Duration in YAML (`0.05s`, `30s`)."""
    return f"{seconds:g}s"


def _parse_upstream(text: str) -> tuple[str, Upstream]:
    key, _, address = text.partition("=")
    host, _, port = address.rpartition(":")
    if key not in SERVICE_NAMES or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected SERVICE=HOST:PORT, got {text!r}")
    return key, Upstream(host, int(port))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agentmesh.devstack.envoy_config",
        description="Render envoy/envoy.yaml.j2 for dev or Kubernetes.",
    )
    parser.add_argument("--out", type=Path, required=True, help="file to write ('-' for stdout)")
    parser.add_argument("--profile", choices=["dev", "k8s"], default="dev")
    parser.add_argument(
        "--descriptor",
        type=Path,
        default=None,
        help="local descriptor set to read (default: gen/descriptors/agentmesh.binpb)",
    )
    parser.add_argument(
        "--envoy-descriptor-path",
        default=None,
        help="descriptor path inside the Envoy container (k8s; default /etc/envoy/descriptors/...)",
    )
    parser.add_argument("--namespace", default="agentmesh", help="k8s namespace of the services")
    parser.add_argument(
        "--upstream",
        action="append",
        type=_parse_upstream,
        default=[],
        metavar="SERVICE=HOST:PORT",
        help="override one service's address (repeatable)",
    )
    parser.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN")
    parser.add_argument("--external-port", type=int, default=None)
    parser.add_argument("--internal-port", type=int, default=None)
    parser.add_argument("--admin-port", type=int, default=None)
    parser.add_argument("--unary-timeout-s", type=float, default=None)
    parser.add_argument(
        "--otlp-endpoint",
        default=None,
        metavar="HOST:PORT",
        help="an OTLP/gRPC collector: Envoy traces every request and exports its spans there",
    )
    parser.add_argument("--validate", action="store_true", help="also run envoy --mode validate")
    args = parser.parse_args(argv)

    descriptor = (args.descriptor or paths.descriptor_set()).resolve()
    if args.profile == "dev":
        values = dev_values(
            ports={"conductor": 50051, "agent": 50052, "job": 50053, "memory": 50054},
            descriptor_path=descriptor,
            cors_allow_origins=args.cors_origin or ("*",),
        )
    else:
        values = k8s_values(
            namespace=args.namespace,
            descriptor_source=descriptor,
            cors_allow_origins=args.cors_origin or (),
            **(
                {"descriptor_path": args.envoy_descriptor_path}
                if args.envoy_descriptor_path
                else {}
            ),
        )
    overrides: dict[str, object] = {}
    if args.upstream:
        overrides["upstreams"] = {**values.upstreams, **dict(args.upstream)}
    for name in ("external_port", "internal_port", "admin_port", "unary_timeout_s"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.otlp_endpoint:
        try:
            overrides["otlp_endpoint"] = otlp_upstream(args.otlp_endpoint)
        except ValueError as exc:
            parser.error(str(exc))
    values = replace(values, **overrides)  # type: ignore[arg-type]
    try:
        text = render_envoy_config(values)
    except (OSError, LookupError, ValueError) as exc:
        parser.error(str(exc))
    if str(args.out) == "-":
        sys.stdout.write(text)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    if args.validate:
        if args.profile != "dev" and values.descriptor_source is not None:
            print(
                "note: validating a k8s config needs its descriptor path to exist here",
                file=sys.stderr,
            )
        validate_envoy_config(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
