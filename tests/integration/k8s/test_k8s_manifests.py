"""The Kubernetes manifests build offline and keep the invariants production relies on.

`kubectl kustomize` renders each overlay (no cluster needed); the checks then read the
rendered objects: native gRPC probes naming the right service on every service
Deployment, hardened pods with resources, Services matching what Envoy's config
resolves, settings pointing at Envoy's internal listener. The committed Envoy config
must be exactly what the renderer writes now, and Envoy itself must accept it.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from agentmesh.core.server import LIVENESS
from agentmesh.devstack import paths
from agentmesh.devstack.envoy_config import (
    K8S_DOCS_DIR,
    SERVICE_NAMES,
    main,
    validate_envoy_config,
)
from k8s_support import (
    K8S,
    NAMESPACE,
    OVERLAYS,
    Manifest,
    of_kind,
    pod_specs,
    render,
    settings_data,
)

pytestmark = pytest.mark.integration

GRPC_PORT = 50051
ENVOY_CONFIG = K8S / "base" / "envoy" / "envoy.yaml"
#: The exact command that wrote ENVOY_CONFIG (docs/operations.md shows it too).
RENDER_ARGS = ("--profile", "k8s", "--cors-origin", "https://app.example.com")
#: Where the k8s config expects the descriptor set inside the Envoy pod.
POD_DESCRIPTOR_PATH = "/etc/envoy/descriptors/agentmesh.binpb"

#: Database URL variables, each from a Secret of its own role (docs/adr/0018).
DATABASE_SECRETS = ("AGENTMESH_DATABASE_URL", "AGENTMESH_MIGRATE_DATABASE_URL")


@pytest.fixture(scope="module", params=OVERLAYS)
def manifests(request: pytest.FixtureRequest) -> list[Manifest]:
    overlay: str = request.param
    return render(overlay)


def test_every_object_is_in_the_namespace_envoy_resolves(manifests: list[Manifest]) -> None:
    for doc in manifests:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == NAMESPACE
        else:
            assert doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]["name"]


def test_service_deployments_probe_their_grpc_service(manifests: list[Manifest]) -> None:
    deployments = of_kind(manifests, "Deployment")
    assert set(deployments) == {*SERVICE_NAMES, "worker", "envoy"}
    for key, full_name in SERVICE_NAMES.items():
        pod = deployments[key]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"] == ["python", "-m", f"agentmesh.{key}"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["grpc"] == GRPC_PORT
        assert "metrics" in ports
        # Readiness asks the service's name, which follows its dependency probes (and is
        # what Envoy health-checks); liveness and startup ask the liveness name, which
        # a database outage does not turn NOT_SERVING (ADR 0015).
        assert container["readinessProbe"]["grpc"] == {"port": GRPC_PORT, "service": full_name}
        for probe in ("startupProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": GRPC_PORT, "service": LIVENESS}, (
                f"{key}.{probe}"
            )


def test_liveness_restarts_a_stuck_service_within_a_minute(manifests: list[Manifest]) -> None:
    # No longer lenient: liveness cannot flap on a dependency outage, so a process that
    # stops answering is restarted promptly.
    deployments = of_kind(manifests, "Deployment")
    for key in SERVICE_NAMES:
        (container,) = deployments[key]["spec"]["template"]["spec"]["containers"]
        liveness = container["livenessProbe"]
        assert liveness["failureThreshold"] * liveness["periodSeconds"] <= 60, key
        assert liveness["failureThreshold"] >= 2, f"{key}: one slow answer must not restart"
        assert liveness["timeoutSeconds"] < liveness["periodSeconds"], key
        readiness = container["readinessProbe"]
        # Out of rotation (readiness) well before a restart (liveness) is considered.
        assert (
            readiness["failureThreshold"] * readiness["periodSeconds"]
            < liveness["failureThreshold"] * liveness["periodSeconds"]
        ), key


def test_worker_and_envoy_have_probes(manifests: list[Manifest]) -> None:
    deployments = of_kind(manifests, "Deployment")
    (worker,) = deployments["worker"]["spec"]["template"]["spec"]["containers"]
    assert worker["command"] == ["python", "-m", "agentmesh.job.worker"]
    assert worker["livenessProbe"]["httpGet"]["path"] == "/metrics"
    (envoy,) = deployments["envoy"]["spec"]["template"]["spec"]["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert envoy[probe]["httpGet"] == {"path": "/ready", "port": "stats"}


def test_pods_are_hardened_and_bounded(manifests: list[Manifest]) -> None:
    for name, pod in pod_specs(manifests):
        assert pod["automountServiceAccountToken"] is False, name
        pod_security = pod["securityContext"]
        assert pod_security["runAsNonRoot"] is True, name
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            where = f"{name}/{container['name']}"
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}, where
            resources = container["resources"]
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[bound]), f"{where} {bound}"


#: Seconds a service needs after SIGTERM besides the drain grace: grpc's stop and the
#: close steps are bounded apart from it, but closing pools and flushing spans takes a
#: moment (docs/operations.md, "Drain and SIGTERM").
SERVICE_CLOSE_S = 5
#: The worker's hand-back of unfinished jobs after its shutdown grace: a write per job.
WORKER_HANDBACK_S = 10


def pre_stop_s(container: Manifest) -> int:
    sleep = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {})
    return int(sleep.get("seconds", 0))


def test_drain_fits_in_the_termination_grace(manifests: list[Manifest]) -> None:
    # Every process finishes its drain before the kubelet's SIGKILL: the services'
    # AGENTMESH_DRAIN_GRACE_S, the worker's AGENTMESH_WORKER_SHUTDOWN_GRACE_S and its
    # hand-back, Envoy's preStop sleep (it exits at once on SIGTERM after it).
    settings = settings_data(manifests)
    drain_s = {
        key: float(settings["AGENTMESH_DRAIN_GRACE_S"]) + SERVICE_CLOSE_S for key in SERVICE_NAMES
    }
    drain_s["worker"] = float(settings["AGENTMESH_WORKER_SHUTDOWN_GRACE_S"]) + WORKER_HANDBACK_S
    drain_s["envoy"] = 0
    deployments = of_kind(manifests, "Deployment")
    assert set(deployments) == set(drain_s)
    for key, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        needed = pre_stop_s(container) + drain_s[key]
        assert pod["terminationGracePeriodSeconds"] > needed, (key, needed)
    # Envoy keeps serving while its endpoint removal spreads, then exits.
    (envoy,) = deployments["envoy"]["spec"]["template"]["spec"]["containers"]
    assert pre_stop_s(envoy) >= 5


def test_settings_come_from_the_configmap_and_secrets_by_reference(
    manifests: list[Manifest],
) -> None:
    (settings,) = [
        d
        for d in of_kind(manifests, "ConfigMap").values()
        if d["metadata"]["name"].startswith("agentmesh-settings")
    ]
    data: dict[str, str] = settings["data"]
    assert all(key.startswith("AGENTMESH_") for key in data)
    secret_keys = {
        "AGENTMESH_AUTH_HS256_SECRET",
        "AGENTMESH_DATABASE_URL",
        "AGENTMESH_MIGRATE_DATABASE_URL",
        "AGENTMESH_REDIS_URL",
    }
    assert not secret_keys & set(data), "secrets must not be in the ConfigMap"
    # No secret value is committed. The dev overlay generates only its in-cluster
    # database's URLs, which carry no password (that database trusts its callers).
    for secret in of_kind(manifests, "Secret").values():
        assert secret["metadata"]["name"].startswith("agentmesh-db-"), secret["metadata"]
        for value in secret["data"].values():
            url = urlsplit(base64.b64decode(value).decode())
            assert url.hostname == f"postgres.{NAMESPACE}.svc.cluster.local", url
            assert url.password is None, "a password in a committed Secret"
    for name, pod in pod_specs(manifests):
        for container in pod["containers"]:
            for var in container.get("env", []):
                if var["name"] in secret_keys:
                    ref = var["valueFrom"]["secretKeyRef"]
                    assert ref["key"] == var["name"], name
                    if var["name"] not in DATABASE_SECRETS:
                        assert ref["name"] == "agentmesh-secrets", name
            refs = [e["configMapRef"]["name"] for e in container.get("envFrom", [])]
            assert all(ref == settings["metadata"]["name"] for ref in refs), name

    # Every *_ADDR names a Service port that exists: Envoy's internal listener.
    services = of_kind(manifests, "Service")
    for key in SERVICE_NAMES:
        host, _, port = data[f"AGENTMESH_{key.upper()}_ADDR"].rpartition(":")
        service_name = host.removesuffix(f".{NAMESPACE}.svc.cluster.local")
        assert service_name in services, host
        ports = {p["port"]: p["name"] for p in services[service_name]["spec"]["ports"]}
        assert ports.get(int(port)) == "internal", data[f"AGENTMESH_{key.upper()}_ADDR"]


def database_credentials(pod: Manifest) -> dict[str, str]:
    """Database URL variable → the Secret it comes from, over the pod's containers."""
    found: dict[str, str] = {}
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        for var in container.get("env", []):
            if var["name"] in DATABASE_SECRETS:
                found[var["name"]] = var["valueFrom"]["secretKeyRef"]["name"]
    return found


def test_only_the_migration_holds_the_owner_credentials(manifests: list[Manifest]) -> None:
    # Least privilege (ADR 0018): the migrate Job alone gets the owner's URL; each
    # service with tables gets its own role's URL; the others get no database.
    wanted = {
        "Job/migrate": {"AGENTMESH_MIGRATE_DATABASE_URL": "agentmesh-db-migrate"},
        "Deployment/memory": {"AGENTMESH_DATABASE_URL": "agentmesh-db-memory"},
        "Deployment/job": {"AGENTMESH_DATABASE_URL": "agentmesh-db-job"},
        # The worker writes job records: the Job service's role, from the same Secret.
        "Deployment/worker": {"AGENTMESH_DATABASE_URL": "agentmesh-db-job"},
        "Deployment/conductor": {"AGENTMESH_DATABASE_URL": "agentmesh-db-conductor"},
    }
    for name, pod in pod_specs(manifests):
        assert database_credentials(pod) == wanted.get(name, {}), name
    # The migration builds the HNSW index with the Memory settings the pods run with.
    (job,) = [d for d in manifests if d["kind"] == "Job" and d["metadata"]["name"] == "migrate"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert [e["configMapRef"]["name"] for e in container["envFrom"]] == [
        next(n for n in of_kind(manifests, "ConfigMap") if n.startswith("agentmesh-settings"))
    ]


def test_headless_services_match_envoy_upstreams(manifests: list[Manifest]) -> None:
    services = of_kind(manifests, "Service")
    config = yaml.safe_load(ENVOY_CONFIG.read_text())
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    for key in SERVICE_NAMES:
        endpoint = clusters[key]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
        address = endpoint["endpoint"]["address"]["socket_address"]
        assert address["address"] == f"{key}-headless.{NAMESPACE}.svc.cluster.local"
        assert address["port_value"] == GRPC_PORT
        spec = services[f"{key}-headless"]["spec"]
        assert spec["clusterIP"] == "None"
        assert spec["selector"] == {"app.kubernetes.io/name": key}
        assert GRPC_PORT in [p["port"] for p in spec["ports"]]


def test_every_service_has_a_route_on_both_listeners_and_a_cluster() -> None:
    # Clients reach each service through the external listener, services each other
    # through the internal one (the NetworkPolicies for both: test_k8s_network.py).
    config = yaml.safe_load(ENVOY_CONFIG.read_text())
    clusters = {c["name"] for c in config["static_resources"]["clusters"]}
    routed: dict[str, set[str]] = {}
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                routes = network_filter["typed_config"].get("route_config", {})
                for host in routes.get("virtual_hosts", []):
                    for route in host["routes"]:
                        target = route.get("route", {}).get("cluster")
                        if target:
                            routed.setdefault(listener["name"], set()).add(target)
    for key in SERVICE_NAMES:
        assert key in clusters, key
        for listener in ("external", "internal"):
            assert key in routed[listener], (listener, key)


def test_envoy_config_matches_the_renderer(tmp_path: Path) -> None:
    fresh = tmp_path / "envoy.yaml"
    assert main([*RENDER_ARGS, "--out", str(fresh)]) == 0
    assert fresh.read_text() == ENVOY_CONFIG.read_text(), (
        "k8s/base/envoy/envoy.yaml is stale: re-render it with\n"
        "  .venv/bin/python -m agentmesh.devstack.envoy_config "
        f"{' '.join(RENDER_ARGS)} --out k8s/base/envoy/envoy.yaml"
    )


def test_envoy_accepts_the_k8s_config(tmp_path: Path) -> None:
    # The config loads the descriptor set from the path it has inside the pod; point
    # that path at the local copy so Envoy can build every filter here, offline. It
    # appears twice: the transcoder's own config and its per-route SSE override.
    text = ENVOY_CONFIG.read_text()
    assert text.count(POD_DESCRIPTOR_PATH) == 2
    # The docs page's files: assembled as the pod's `docs` init container does it.
    docs = tmp_path / "docs"
    shutil.copytree(paths.docs_dir(), docs)
    shutil.copy(paths.openapi_description(), docs / "openapi.json")
    assert text.count(K8S_DOCS_DIR + "/") == 5
    text = text.replace(K8S_DOCS_DIR + "/", f"{docs}/")
    local = tmp_path / "envoy.yaml"
    local.write_text(text.replace(POD_DESCRIPTOR_PATH, str(paths.descriptor_set())))
    validate_envoy_config(local)


def test_envoy_pod_copies_the_docs_page_from_the_image() -> None:
    deployment = yaml.safe_load((K8S / "base" / "envoy" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    (init,) = [c for c in pod["initContainers"] if c["name"] == "docs"]
    script = init["command"][-1]
    assert "/app/envoy/docs/." in script
    assert f"/app/gen/openapi/agentmesh.json {K8S_DOCS_DIR}/openapi.json" in script
    (envoy,) = [c for c in pod["containers"] if c["name"] == "envoy"]
    mounts = {m["mountPath"]: m for m in envoy["volumeMounts"]}
    assert mounts[K8S_DOCS_DIR]["readOnly"] is True


def container_env(docs: list[Manifest], deployment: str) -> dict[str, Manifest]:
    """The container's own variables by name, plus the settings ConfigMap's keys (as
    ``{"configMap": value}``) when the container loads it with envFrom."""
    (container,) = of_kind(docs, "Deployment")[deployment]["spec"]["template"]["spec"]["containers"]
    found: dict[str, Manifest] = {}
    if container.get("envFrom"):
        found.update({k: {"configMap": v} for k, v in settings_data(docs).items()})
    found.update({var["name"]: var for var in container.get("env", [])})
    return found


def test_the_job_service_and_the_worker_reach_agents_through_envoy(
    manifests: list[Manifest],
) -> None:
    # The Job service reads agent cards; the worker runs agents. Both through Envoy's
    # internal listener (per-request balancing, retries), never a Service of the Agent.
    wanted = settings_data(manifests)["AGENTMESH_AGENT_ADDR"]
    assert wanted.startswith(f"envoy.{NAMESPACE}.svc.cluster.local:")
    for deployment in ("job", "worker"):
        env = container_env(manifests, deployment)
        assert env["AGENTMESH_AGENT_ADDR"] == {"configMap": wanted}, deployment


def test_the_worker_has_what_it_refuses_to_start_without(manifests: list[Manifest]) -> None:
    # `python -m agentmesh.job.worker` exits 2 without a Redis URL, a database URL, the
    # Agent's address, and a way to sign its calls: an RS256 key file with its id, or
    # the HS256 secret.
    env = container_env(manifests, "worker")
    assert {"AGENTMESH_REDIS_URL", "AGENTMESH_DATABASE_URL", "AGENTMESH_AGENT_ADDR"} <= set(env)
    rs256 = {"AGENTMESH_WORKER_SIGNING_KEY_FILE", "AGENTMESH_WORKER_SIGNING_KEY_ID"}
    assert rs256 <= set(env) or "AGENTMESH_AUTH_HS256_SECRET" in env
    # Room to hand running jobs back after their grace, before the kubelet's SIGKILL.
    pod = of_kind(manifests, "Deployment")["worker"]["spec"]["template"]["spec"]
    grace_s = float(settings_data(manifests)["AGENTMESH_WORKER_SHUTDOWN_GRACE_S"])
    assert pod["terminationGracePeriodSeconds"] >= grace_s + 10


#: Where prod's worker reads its RS256 signing key, and the operator's Secret holding it.
PROD_WORKER_KEY_FILE = "/etc/agentmesh/worker-signing/private.pem"
PROD_WORKER_KEY_SECRET = "agentmesh-worker-signing"


def test_prod_worker_signs_with_a_mounted_rs256_key() -> None:
    docs = render("prod")
    env = container_env(docs, "worker")
    assert "AGENTMESH_AUTH_HS256_SECRET" not in env
    assert env["AGENTMESH_WORKER_SIGNING_KEY_FILE"]["value"] == PROD_WORKER_KEY_FILE
    kid = env["AGENTMESH_WORKER_SIGNING_KEY_ID"]["valueFrom"]["secretKeyRef"]
    assert kid == {"name": PROD_WORKER_KEY_SECRET, "key": "kid"}
    pod = of_kind(docs, "Deployment")["worker"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    key_dir, _, key_name = PROD_WORKER_KEY_FILE.rpartition("/")
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == key_dir]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    source = volume["secret"]
    assert source["secretName"] == PROD_WORKER_KEY_SECRET
    assert source.get("optional", False) is False, "the worker must not start unsigned"
    assert [item["path"] for item in source["items"]] == [key_name]
    # A private key: readable by the pod's group only, which the worker runs in.
    assert source["defaultMode"] == 0o440
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    # The operator owns the key, like the JWKS: never committed or generated.
    assert PROD_WORKER_KEY_SECRET not in of_kind(docs, "Secret")


#: Where prod's services read the JWKS: a file in a directory mounted from a ConfigMap.
PROD_JWKS_FILE = "/etc/agentmesh/jwks/jwks.json"
PROD_JWKS_CONFIGMAP = "agentmesh-jwks"


def test_prod_verifies_rs256_with_a_mounted_jwks_and_holds_no_hs256_secret() -> None:
    docs = render("prod")
    # No pod gets the HS256 secret, by name or wholesale through envFrom, nor a setting
    # that carries one.
    for name, pod in pod_specs(docs):
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            where = f"{name}/{container['name']}"
            names = {var["name"] for var in container.get("env", [])}
            assert "AGENTMESH_AUTH_HS256_SECRET" not in names, where
            assert all("secretRef" not in ref for ref in container.get("envFrom", [])), where
    for configmap in of_kind(docs, "ConfigMap").values():
        assert "AGENTMESH_AUTH_HS256_SECRET" not in configmap.get("data", {})
    # Every service verifies RS256 with the JWKS file from the operator's ConfigMap.
    jwks_dir, _, jwks_name = PROD_JWKS_FILE.rpartition("/")
    deployments = of_kind(docs, "Deployment")
    for key in SERVICE_NAMES:
        pod = deployments[key]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {var["name"]: var for var in container.get("env", [])}
        assert env["AGENTMESH_AUTH_JWKS_FILE"] == {
            "name": "AGENTMESH_AUTH_JWKS_FILE",
            "value": PROD_JWKS_FILE,
        }, key
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == jwks_dir]
        # A subPath mount never sees ConfigMap updates: keys would not rotate.
        assert "subPath" not in mount, key
        assert mount.get("readOnly") is True, key
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        source = volume["configMap"]
        assert source["name"] == PROD_JWKS_CONFIGMAP, key
        assert source.get("optional", False) is False, f"{key}: start without keys"
        paths_in_volume = {item["path"] for item in source.get("items", [])} or {jwks_name}
        assert jwks_name in paths_in_volume, key
    # The operator owns the keys: the overlay neither commits nor generates them (an
    # apply would otherwise put back the keys of the last commit over a rotation).
    assert PROD_JWKS_CONFIGMAP not in of_kind(docs, "ConfigMap")


def test_no_envoy_config_verifies_tokens_with_a_shared_secret() -> None:
    # Tokens are verified by the services (docs/adr/0006). If Envoy ever verifies them
    # too, it must be with public keys only: no symmetric ("oct") key in its config.
    config = yaml.safe_load(ENVOY_CONFIG.read_text())
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                http_filters = network_filter["typed_config"].get("http_filters", [])
                for http_filter in http_filters:
                    if http_filter["name"] != "envoy.filters.http.jwt_authn":
                        continue
                    providers = http_filter["typed_config"].get("providers", {})
                    for name, provider in providers.items():
                        inline = provider.get("local_jwks", {}).get("inline_string", "")
                        assert '"oct"' not in inline.replace(" ", ""), name
