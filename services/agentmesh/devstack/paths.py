"""Where the repository's non-Python inputs live (migrations, Envoy template, descriptors)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agentmesh.core.settings import ENV_PREFIX, Check, load_settings


@dataclass(frozen=True)
class PathSettings:
    """Where the repository's inputs are, when the package is installed away from them."""

    repo_root: str | None = None
    """``AGENTMESH_REPO_ROOT``: the directory holding ``migrations/``, ``envoy/`` and
    ``gen/descriptors/``; unset means the checkout this package runs from."""

    def checks(self) -> list[Check]:
        """Nothing to range-check: any path is taken as given."""
        return []


def repo_root() -> Path:
    """The checkout this package runs from: the first parent holding pyproject.toml.

    `AGENTMESH_REPO_ROOT` overrides it for layouts where the package is installed away
    from the sources (a container image that copies `migrations/` and `envoy/`).
    """
    override = load_settings(PathSettings, prefix=ENV_PREFIX).repo_root
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


def openapi_description() -> Path:
    """The OpenAPI description of the JSON API `make gen` writes (Envoy serves it)."""
    return repo_root() / "gen" / "openapi" / "agentmesh.json"


def docs_dir() -> Path:
    """The API docs page Envoy serves at `/docs/` (Swagger UI, vendored)."""
    return repo_root() / "envoy" / "docs"


def descriptor_set() -> Path:
    """The FileDescriptorSet `make gen` writes and Envoy's transcoder loads."""
    return repo_root() / "gen" / "descriptors" / "agentmesh.binpb"
