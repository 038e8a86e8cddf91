"""The NetworkPolicies of each overlay allow exactly the paths the mesh uses.

A small evaluator of NetworkPolicy semantics (podSelector, namespaceSelector, ipBlock,
ports; a pod selected by no policy of a direction is open in that direction, one that
is selected only lets in or out what some rule allows) is run over the rendered objects:
for every pair of pods (and peers outside the namespace) the test states whether a
connection on a port must pass, and checks both ends' policies.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import pytest

from agentmesh.devstack.envoy_config import SERVICE_NAMES
from k8s_support import NAMESPACE, OVERLAYS, Manifest, of_kind, render, settings_data

pytestmark = pytest.mark.integration

SERVICES = tuple(SERVICE_NAMES)
#: Who calls other services (through Envoy's internal listener), from the code: Conductor
#: calls Memory, Agent and Job; Agent calls Memory; Job reads agent cards; the worker
#: runs agents. Memory calls nobody.
CALLERS = {"conductor", "agent", "job", "worker"}
#: Who opens a PostgreSQL connection (ADR 0018: the data owners, the worker as the Job
#: service's role, and the migration).
POSTGRES_CLIENTS = {"conductor", "job", "memory", "worker", "migrate"}
#: Who uses Redis: the data owners, the worker (Dramatiq's broker), Agent (budgets).
REDIS_CLIENTS = {"conductor", "agent", "job", "memory", "worker"}
#: Who calls LLM providers: Agent (graphs) and Conductor (the supervisor).
LLM_CLIENTS = {"agent", "conductor"}
EXTERNAL_DB = "10.20.30.40"  # a managed database in the VPC
PUBLIC = "203.0.113.7"  # a client on the internet, or an LLM provider


@dataclass(frozen=True)
class Peer:
    """A pod (labels, namespace) or an address outside the cluster."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    namespace: str | None = None
    ip: str = "10.1.2.3"


def outside(ip: str) -> Peer:
    return Peer(name=ip, ip=ip)


MONITORING = Peer("prometheus", {"app": "prometheus"}, "monitoring")
OTHER_NAMESPACE = Peer("intruder", {"app": "x"}, "default")
KUBE_DNS = Peer("coredns", {"k8s-app": "kube-dns"}, "kube-system")
COLLECTOR = Peer("otel-collector", {"app": "otel-collector"}, "monitoring")


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = (
            expression["key"],
            expression["operator"],
            expression.get("values", []),
        )
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def in_block(block: dict[str, Any], peer: Peer) -> bool:
    if peer.namespace is not None:
        return False  # pod traffic is matched by selectors (cluster ranges excluded)
    address = ipaddress.ip_address(peer.ip)
    if address not in ipaddress.ip_network(block["cidr"]):
        return False
    return not any(address in ipaddress.ip_network(c) for c in block.get("except", []))


def peer_matches(rule_peer: dict[str, Any], peer: Peer) -> bool:
    if "ipBlock" in rule_peer:
        return in_block(rule_peer["ipBlock"], peer)
    if peer.namespace is None:
        return False
    if "namespaceSelector" in rule_peer:
        namespace_labels = {"kubernetes.io/metadata.name": peer.namespace}
        if not matches(rule_peer["namespaceSelector"], namespace_labels):
            return False
    elif peer.namespace != NAMESPACE:
        return False
    return matches(rule_peer.get("podSelector", {}), peer.labels)


def port_matches(rule: dict[str, Any], port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    if not ports:
        return True
    return any(p.get("protocol", "TCP") == protocol and p.get("port") == port for p in ports)


class Policies:
    def __init__(self, docs: list[Manifest]) -> None:
        self.policies = list(of_kind(docs, "NetworkPolicy").values())

    def _allowed(self, pod: Peer, other: Peer, port: int, protocol: str, direction: str) -> bool:
        if pod.namespace != NAMESPACE:
            return True  # not ours to police
        key, peers = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        selecting = [
            p
            for p in self.policies
            if direction in p["spec"]["policyTypes"]
            and matches(p["spec"]["podSelector"], pod.labels)
        ]
        if not selecting:
            return True
        for policy in selecting:
            for rule in policy["spec"].get(key, []):
                if not port_matches(rule, port, protocol):
                    continue
                if peers not in rule or any(peer_matches(r, other) for r in rule[peers]):
                    return True
        return False

    def connects(self, source: Peer, target: Peer, port: int, protocol: str = "TCP") -> bool:
        return self._allowed(source, target, port, protocol, "Egress") and self._allowed(
            target, source, port, protocol, "Ingress"
        )


def pods(docs: list[Manifest]) -> dict[str, Peer]:
    found = {}
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            labels = doc["spec"]["template"]["metadata"]["labels"]
            found[labels["app.kubernetes.io/name"]] = Peer(
                labels["app.kubernetes.io/name"], labels, NAMESPACE
            )
    return found


@pytest.fixture(scope="module", params=OVERLAYS)
def mesh(request: pytest.FixtureRequest) -> tuple[str, list[Manifest], dict[str, Peer], Policies]:
    overlay: str = request.param
    docs = render(overlay)
    return overlay, docs, pods(docs), Policies(docs)


Mesh = tuple[str, list[Manifest], dict[str, Peer], Policies]


def test_every_pod_is_under_the_default_deny(mesh: Mesh) -> None:
    _, docs, _, _ = mesh
    deny = of_kind(docs, "NetworkPolicy")["default-deny"]["spec"]
    assert deny["podSelector"] == {}
    assert sorted(deny["policyTypes"]) == ["Egress", "Ingress"]
    assert "ingress" not in deny
    assert "egress" not in deny


def test_only_envoys_external_port_is_reachable_from_outside(mesh: Mesh) -> None:
    _, _, pod, policies = mesh
    for client in (outside(PUBLIC), OTHER_NAMESPACE):
        assert policies.connects(client, pod["envoy"], 8080), client.name
        for port in (8081, 9902, 9901):
            assert not policies.connects(client, pod["envoy"], port), (client.name, port)
        for name, target in pod.items():
            if name != "envoy":
                for port in (50051, 9100, 5432, 6379):
                    assert not policies.connects(client, target, port), (client.name, name, port)


def test_services_take_grpc_from_envoy_only(mesh: Mesh) -> None:
    _, _, pod, policies = mesh
    for service in SERVICES:
        assert policies.connects(pod["envoy"], pod[service], 50051), service
        for name, source in pod.items():
            if name != "envoy":
                # No pod-to-pod calls: each goes through Envoy's internal listener.
                assert not policies.connects(source, pod[service], 50051), (name, service)


def test_exactly_the_callers_reach_envoys_internal_listener(mesh: Mesh) -> None:
    _, _, pod, policies = mesh
    for name, source in pod.items():
        if name == "envoy":
            continue
        wanted = name in CALLERS
        assert policies.connects(source, pod["envoy"], 8081) is wanted, name


def test_scraping_from_the_monitoring_namespace_only(mesh: Mesh) -> None:
    _, docs, pod, policies = mesh
    # Every pod that says it is scraped is reachable from monitoring on that port.
    for doc in of_kind(docs, "Deployment").values():
        template = doc["spec"]["template"]
        annotations = template["metadata"].get("annotations", {})
        name = template["metadata"]["labels"]["app.kubernetes.io/name"]
        assert annotations.get("prometheus.io/scrape") == "true", name
        port = int(annotations["prometheus.io/port"])
        (container,) = template["spec"]["containers"]
        declared = {p["containerPort"]: p["name"] for p in container["ports"]}
        assert port in declared, f"{name} scrapes an undeclared port {port}"
        assert annotations["prometheus.io/path"].startswith("/"), name
        assert policies.connects(MONITORING, pod[name], port), name
        assert not policies.connects(OTHER_NAMESPACE, pod[name], port), name


def test_only_data_owners_reach_postgres_and_redis(mesh: Mesh) -> None:
    overlay, _, pod, policies = mesh
    database = outside(EXTERNAL_DB)
    for name, source in pod.items():
        if name in ("postgres", "redis"):
            continue
        assert policies.connects(source, database, 5432) is (name in POSTGRES_CLIENTS), name
        assert policies.connects(source, database, 6379) is (name in REDIS_CLIENTS), name
        if overlay == "dev":  # the in-cluster stores let in the same pods
            assert policies.connects(source, pod["postgres"], 5432) is (name in POSTGRES_CLIENTS)
            assert policies.connects(source, pod["redis"], 6379) is (name in REDIS_CLIENTS)


def test_llm_egress_only_from_agent_and_conductor_and_never_into_private_ranges(
    mesh: Mesh,
) -> None:
    _, _, pod, policies = mesh
    for name, source in pod.items():
        assert policies.connects(source, outside(PUBLIC), 443) is (name in LLM_CLIENTS), name
    for private in ("10.0.0.1", "172.20.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1"):
        assert not policies.connects(pod["agent"], outside(private), 443), private


def test_dns_for_every_pod_and_spans_to_the_collector(mesh: Mesh) -> None:
    overlay, docs, pod, policies = mesh
    for name, source in pod.items():
        assert policies.connects(source, KUBE_DNS, 53, "UDP"), name
        assert policies.connects(source, KUBE_DNS, 53, "TCP"), name
    endpoint = settings_data(docs).get("AGENTMESH_OTLP_ENDPOINT")
    if overlay == "prod":
        assert endpoint, "prod exports spans"
    if endpoint:
        port = int(endpoint.rsplit(":", 1)[1])
        for name in (*SERVICES, "worker"):
            assert policies.connects(pod[name], COLLECTOR, port), name
