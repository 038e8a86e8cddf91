"""The image and the rendered manifests pass the offline checkers `make test` installs.

- hadolint lints k8s/image/Dockerfile (any finding fails, infos included);
- kubernetes-validate checks every rendered object of every overlay against the
  Kubernetes OpenAPI schemas it bundles, strictly (an unknown field fails);
- checkov applies its Kubernetes and Dockerfile policies; the checks we do not follow
  are listed once, below, each with its reason, and a listed check that no longer fails
  anywhere fails the test (the list only shrinks with the reasons).

Each checker is also shown a broken input, so a checker that silently passes
everything fails here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from k8s_support import BIN, K8S, OVERLAYS, REPO, kustomize, rendered_text

pytestmark = pytest.mark.integration

HADOLINT = BIN / "hadolint"
KUBERNETES_VALIDATE = BIN / "kubernetes-validate"
#: checkov lives in an environment of its own (tools/checkov; `make checkov-tools`).
CHECKOV = REPO / ".tools" / "checkov" / "bin" / "checkov"
DOCKERFILE = K8S / "image" / "Dockerfile"
#: Kubernetes releases the manifests must be valid for: the oldest we support and the
#: newest kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.30", "1.37")
#: The optional component that adds the worker's queue-depth autoscaling.
QUEUE_COMPONENT = K8S / "components" / "worker-queue-autoscaling"

#: checkov checks we do not follow, everywhere, and why. The only place they are listed.
CHECKOV_SKIPS: dict[str, str] = {
    "CKV_K8S_15": "imagePullPolicy Always: images are pinned (release tag or digest), so "
    "IfNotPresent pulls the same bytes without a registry round trip on every start",
    "CKV_K8S_35": "secrets as files: the settings loader reads environment variables; "
    "the keys that are files (JWKS, worker signing key) are mounted as files already",
    "CKV_K8S_43": "image digests: an overlay pins a release tag; the digest exists only "
    "once the image is built and goes in at release (`images: digest:`, docs/deploy.md)",
    "CKV_DOCKER_2": "HEALTHCHECK: Kubernetes ignores it; the probes live in the "
    "manifests (native gRPC for the services, HTTP for the worker)",
}
#: Checks skipped for one resource only (checkov's resource id → check → why).
CHECKOV_RESOURCE_SKIPS: dict[tuple[str, str], str] = {
    ("CKV_K8S_40", "StatefulSet.agentmesh.postgres"): "dev only: the pgvector image's own "
    "postgres user (UID 999) owns its data directory",
    ("CKV_K8S_40", "StatefulSet.agentmesh.redis"): "dev only: the redis image's own user (UID 999)",
}


def run(*argv: str | Path, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout_s, check=False
    )


def require(tool: Path, installed_by: str) -> None:
    # Missing infrastructure fails; it never skips.
    assert tool.exists(), f"{tool.name} is missing: run {installed_by}"


# -- hadolint ---------------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint() -> None:
    require(HADOLINT, "make env")
    result = run(HADOLINT, "--no-color", "--failure-threshold", "info", DOCKERFILE)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_hadolint_fails_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n")
    result = run(HADOLINT, "--no-color", "--format", "json", bad)
    assert result.returncode != 0
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert {"DL3007", "DL3008"} <= codes, codes  # latest tag; unpinned apt package


def final_stage(dockerfile: str) -> tuple[list[str], list[str]]:
    """The base images of every stage, and the instructions of the last stage."""
    lines = [line.strip() for line in dockerfile.replace("\\\n", " ").splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    starts = [i for i, line in enumerate(instructions) if line.upper().startswith("FROM ")]
    bases = [instructions[i].split()[1] for i in starts]
    return bases, instructions[starts[-1] :]


def test_the_image_is_pinned_non_root_and_ships_no_build_tools() -> None:
    bases, last = final_stage(DOCKERFILE.read_text())
    for base in bases:
        # An exact release (major.minor.patch), optionally with its digest; never a
        # moving tag such as 3.11-slim or latest.
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    users = [line.split()[1] for line in last if line.upper().startswith("USER ")]
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), f"USER {users[-1]}: a numeric UID (runAsNonRoot can check it)"
    assert int(uid) >= 10000, f"USER {users[-1]}: a high UID, apart from the host's users"
    text = "\n".join(last)
    for tool in ("uv ", "uv==", "apt-get install", "gcc", "build-essential", "pip install"):
        assert tool not in text, f"the final stage installs or carries {tool.strip()}"
    assert "pip uninstall" in text, "the base image's pip stays in the final stage"


# -- kubernetes-validate ----------------------------------------------------------------


def rendered_files(tmp_path: Path) -> list[Path]:
    files = []
    for overlay in OVERLAYS:
        path = tmp_path / f"{overlay}.yaml"
        path.write_text(rendered_text(overlay))
        files.append(path)
    return files


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_object_matches_the_kubernetes_schemas(tmp_path: Path, version: str) -> None:
    require(KUBERNETES_VALIDATE, "make env")
    files = rendered_files(tmp_path)
    result = run(KUBERNETES_VALIDATE, "--strict", "--quiet", "-k", version, *files)
    assert result.returncode == 0, f"kubernetes-validate {version}:\n{result.stdout}"


def test_the_worker_queue_autoscaling_component_builds_and_validates(tmp_path: Path) -> None:
    # Not in any overlay by default (it needs an external-metrics adapter): built here
    # on top of prod, as docs/deploy.md tells an operator to.
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    # kustomize takes only relative paths to other kustomizations.
    prod = os.path.relpath(K8S / "overlays" / "prod", overlay)
    component = os.path.relpath(QUEUE_COMPONENT, overlay)
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n- {prod}\ncomponents:\n- {component}\n"
    )
    text = kustomize(overlay)
    assert "agentmesh_job_queue_depth" in text
    rendered = tmp_path / "with-queue.yaml"
    rendered.write_text(text)
    result = run(KUBERNETES_VALIDATE, "--strict", "--quiet", rendered)
    assert result.returncode == 0, result.stdout


def test_kubernetes_validate_fails_an_unknown_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n"
        "  replicaz: 2\n  selector: {matchLabels: {a: b}}\n"
        "  template: {metadata: {labels: {a: b}}, spec: {containers: [{name: c, image: i}]}}\n"
    )
    result = run(KUBERNETES_VALIDATE, "--strict", "--quiet", bad)
    assert result.returncode != 0
    assert "replicaz" in result.stdout


# -- checkov ----------------------------------------------------------------------------


def checkov(*files: Path) -> list[dict[str, Any]]:
    """checkov's failed checks over ``files``, offline: no update check, no download of
    guidelines or external checks."""
    require(CHECKOV, "make checkov-tools")
    args: list[str | Path] = [CHECKOV, "--skip-download", "--framework", "kubernetes"]
    args += ["--framework", "dockerfile", "--output", "json", "--quiet", "--compact"]
    for path in files:
        args += ["--file", path]
    env = {**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE"}
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=300, env=env, check=False
    )
    assert result.stdout.strip(), f"checkov printed nothing:\n{result.stderr}"
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed: list[dict[str, Any]] = []
    for report in reports:
        failed += report.get("results", {}).get("failed_checks", [])
    # checkov exits 1 when a check fails: anything else is checkov failing.
    assert result.returncode == (1 if failed else 0), result.stderr
    return failed


def test_checkov_passes_on_every_overlay_and_the_dockerfile(tmp_path: Path) -> None:
    files = rendered_files(tmp_path)
    started = time.monotonic()
    failed = checkov(*files, DOCKERFILE)
    took_s = time.monotonic() - started
    unexpected = []
    seen: set[str] = set()
    for check in failed:
        check_id, resource = check["check_id"], check["resource"]
        seen.add(check_id)
        if check_id in CHECKOV_SKIPS or (check_id, resource) in CHECKOV_RESOURCE_SKIPS:
            seen.add(f"{check_id} {resource}")
            continue
        unexpected.append(f"{check_id} {check['check_name']}: {resource}")
    assert not unexpected, "checkov:\n" + "\n".join(sorted(set(unexpected)))
    # A reason for a check that passes everywhere is stale: drop it from the list.
    stale = [c for c in CHECKOV_SKIPS if c not in seen]
    stale += [f"{c} {r}" for c, r in CHECKOV_RESOURCE_SKIPS if f"{c} {r}" not in seen]
    assert not stale, f"skipped checks that no longer fail: {stale}"
    assert took_s < 90, f"checkov took {took_s:.0f} s"


def test_checkov_fails_an_unhardened_pod(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x, namespace: agentmesh}\n"
        "spec: {containers: [{name: c, image: 'i:1', securityContext: {privileged: true}}]}\n"
    )
    ids = {check["check_id"] for check in checkov(bad)}
    assert {"CKV_K8S_16", "CKV_K8S_28"} <= ids, ids  # privileged; NET_RAW not dropped
