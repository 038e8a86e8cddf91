"""Where the repository's non-Python inputs live (migrations, Envoy template, descriptors)."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The checkout this package runs from: the first parent holding pyproject.toml.

    `AGENTMESH_REPO_ROOT` overrides it for layouts where the package is installed away
    from the sources (a container image that copies `migrations/` and `envoy/`).
    """
    override = os.environ.get("AGENTMESH_REPO_ROOT")
    if override:
        return Path(override).resolve()
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "migrations").is_dir():
            return parent
    raise FileNotFoundError(
        f"no repository root (pyproject.toml + migrations/) above {here}; set AGENTMESH_REPO_ROOT"
    )


def migrations_dir() -> Path:
    return repo_root() / "migrations"


def envoy_template() -> Path:
    return repo_root() / "envoy" / "envoy.yaml.j2"


def descriptor_set() -> Path:
    """The FileDescriptorSet `make gen` writes and Envoy's transcoder loads."""
    return repo_root() / "gen" / "descriptors" / "agentmesh.binpb"
