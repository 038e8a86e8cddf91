"""Rendering the Kubernetes manifests offline, for the tests under tests/integration/k8s.

`kubectl kustomize` (the venv's kubectl) renders an overlay with no cluster; the helpers
pick objects out of what it printed.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from agentmesh.devstack import paths

REPO = paths.repo_root()
K8S = REPO / "k8s"
BIN = REPO / ".venv" / "bin"
KUBECTL = BIN / "kubectl"
OVERLAYS = ("dev", "prod")
NAMESPACE = "agentmesh"

Manifest = dict[str, Any]


def kustomize(directory: Path) -> str:
    """What `kubectl kustomize directory` prints; fails the test with kubectl's error."""
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return result.stdout


@cache
def rendered_text(overlay: str) -> str:
    """The overlay's rendered YAML (rendered once per test session)."""
    return kustomize(K8S / "overlays" / overlay)


def render(overlay: str) -> list[Manifest]:
    """The overlay's objects, freshly parsed (tests may change their copy)."""
    docs = [doc for doc in yaml.safe_load_all(rendered_text(overlay)) if doc is not None]
    assert docs, f"overlay {overlay} rendered nothing"
    return docs


def of_kind(docs: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    """Every pod template: Deployments, StatefulSets and Jobs."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def settings_data(docs: list[Manifest]) -> dict[str, str]:
    """The data of the settings ConfigMap (its name carries a content hash)."""
    (settings,) = [
        d
        for d in of_kind(docs, "ConfigMap").values()
        if d["metadata"]["name"].startswith("agentmesh-settings")
    ]
    data: dict[str, str] = settings["data"]
    return data
