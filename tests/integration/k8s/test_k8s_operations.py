"""What an operator relies on when the mesh runs: autoscaling, spreading, the edge, the
backing stores of the dev overlay, and the order in which a release is applied."""

from __future__ import annotations

import base64
import re
import shlex
from urllib.parse import urlsplit

import pytest

from k8s_support import NAMESPACE, OVERLAYS, REPO, Manifest, of_kind, render, settings_data

pytestmark = pytest.mark.integration

DEPLOY_DOC = REPO / "docs" / "deploy.md"
#: The label selector of the first apply of a release (docs/deploy.md): everything but
#: the Deployments, so the migrate Job runs before any pod of the new release starts.
PHASE_ONE_SELECTOR = "app.kubernetes.io/component notin (service,worker,proxy)"


@pytest.fixture(scope="module", params=OVERLAYS)
def manifests(request: pytest.FixtureRequest) -> list[Manifest]:
    overlay: str = request.param
    return render(overlay)


def test_every_deployment_has_a_cpu_autoscaler_and_no_fixed_replicas(
    manifests: list[Manifest],
) -> None:
    deployments = of_kind(manifests, "Deployment")
    autoscalers = of_kind(manifests, "HorizontalPodAutoscaler")
    targets = {}
    for name, hpa in autoscalers.items():
        assert hpa["apiVersion"] == "autoscaling/v2", name
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment"), name
        targets[ref["name"]] = hpa
    assert set(targets) == set(deployments)
    for name, hpa in targets.items():
        spec = hpa["spec"]
        assert 1 <= spec["minReplicas"] <= spec["maxReplicas"], name
        # CPU only by default: an External metric without an adapter would be reported
        # as failing (the queue-depth metric is an optional component).
        assert [m["type"] for m in spec["metrics"]] == ["Resource"], name
        assert spec["metrics"][0]["resource"]["name"] == "cpu", name
        # An apply would reset what the autoscaler chose.
        assert "replicas" not in deployments[name]["spec"], name
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        assert "cpu" in container["resources"]["requests"], f"{name}: utilization needs it"


def test_prod_keeps_three_replicas_within_the_disruption_budgets() -> None:
    docs = render("prod")
    budgets = of_kind(docs, "PodDisruptionBudget")
    for name, hpa in of_kind(docs, "HorizontalPodAutoscaler").items():
        assert hpa["spec"]["minReplicas"] >= 3, name
        assert budgets[name]["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"], name


def test_every_deployment_spreads_over_zones_and_nodes(manifests: list[Manifest]) -> None:
    for name, deployment in of_kind(manifests, "Deployment").items():
        constraints = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        keys = {c["topologyKey"] for c in constraints}
        assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}, name
        for constraint in constraints:
            # Best effort: a one-zone or one-node cluster still schedules everything.
            assert constraint["whenUnsatisfiable"] == "ScheduleAnyway", name
            assert "app.kubernetes.io/name" in constraint["matchLabelKeys"], name


def test_only_envoy_is_exposed_and_prod_terminates_tls_in_front_of_it(
    manifests: list[Manifest],
) -> None:
    exposed = {
        name: service
        for name, service in of_kind(manifests, "Service").items()
        if service["spec"].get("type", "ClusterIP") != "ClusterIP"
    }
    assert not of_kind(manifests, "Ingress")
    if not exposed:
        return
    assert set(exposed) == {"envoy-public"}
    spec = exposed["envoy-public"]["spec"]
    assert spec["type"] == "LoadBalancer"
    assert spec["selector"] == {"app.kubernetes.io/name": "envoy"}
    # TLS on 443 only, to Envoy's external listener; never the internal one or stats.
    assert [(p["port"], p["targetPort"]) for p in spec["ports"]] == [(443, "external")]
    annotations = exposed["envoy-public"]["metadata"]["annotations"]
    prefix = "service.beta.kubernetes.io/aws-load-balancer-"
    assert annotations[prefix + "ssl-ports"] == "https"
    assert annotations[prefix + "ssl-cert"].startswith("arn:aws:acm:")
    assert "TLS13" in annotations[prefix + "ssl-negotiation-policy"]
    # gRPC clients negotiate HTTP/2 through the balancer's TLS.
    assert annotations[prefix + "alpn-policy"] == "HTTP2Preferred"


def test_dev_runs_its_stores_in_the_namespace_and_points_the_secrets_at_them() -> None:
    docs = render("dev")
    services = of_kind(docs, "Service")
    stores = of_kind(docs, "StatefulSet")
    assert set(stores) == {"postgres", "redis"}
    images = {
        name: s["spec"]["template"]["spec"]["containers"][0]["image"] for name, s in stores.items()
    }
    # Pinned releases, pgvector on PostgreSQL 18 (what the embedded server runs).
    assert re.fullmatch(r"pgvector/pgvector:\d+\.\d+\.\d+-pg18", images["postgres"]), images
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+-alpine", images["redis"]), images
    for secret in of_kind(docs, "Secret").values():
        for value in secret["data"].values():
            url = urlsplit(base64.b64decode(value).decode())
            host = url.hostname or ""
            assert host.endswith(f".{NAMESPACE}.svc.cluster.local"), url
            service = services[host.split(".")[0]]
            assert url.port in [p["port"] for p in service["spec"]["ports"]], url
    # Every login role the Secrets name exists at the database's first start.
    (initdb,) = [
        c for n, c in of_kind(docs, "ConfigMap").items() if n.startswith("postgres-initdb")
    ]
    for secret in of_kind(docs, "Secret").values():
        user = urlsplit(base64.b64decode(next(iter(secret["data"].values()))).decode()).username
        assert user == "postgres" or f"CREATE ROLE {user} LOGIN" in initdb["data"]["initdb.sql"]


def selected(labels: dict[str, str], selector: str) -> bool:
    """kubectl's `key notin (a,b)`: true when the label is absent or not one of them."""
    match = re.fullmatch(r"(\S+) notin \(([^)]*)\)", selector)
    assert match, selector
    key, values = match.group(1), match.group(2).split(",")
    return labels.get(key) not in values


def test_the_migration_runs_before_any_pod_of_a_release_starts(
    manifests: list[Manifest],
) -> None:
    # docs/deploy.md applies a release in two steps: first everything the selector
    # picks, which must include the migrate Job and the settings it reads and exclude
    # every Deployment; `kubectl wait` for the Job; then everything.
    doc = DEPLOY_DOC.read_text()
    assert f"-l '{PHASE_ONE_SELECTOR}'" in doc
    assert "kubectl -n agentmesh wait --for=condition=complete job/migrate" in doc
    first = [d for d in manifests if selected(d["metadata"].get("labels", {}), PHASE_ONE_SELECTOR)]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in first}
    assert ("Job", "migrate") in kinds
    assert not [name for kind, name in kinds if kind == "Deployment"]
    settings_name = next(
        name
        for kind, name in kinds
        if kind == "ConfigMap" and name.startswith("agentmesh-settings")
    )
    assert settings_data(manifests)
    (job,) = [d for d in manifests if d["kind"] == "Job"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"configMapRef": {"name": settings_name}}]
    # What the Job runs: the migrations, then the HNSW index with the pods' settings.
    assert shlex.join(container["command"]) == "python -m agentmesh.devstack.migrate up"
