"""Settings of the Dramatiq worker process: ``AGENTMESH_WORKER_*`` variables.

Loaded by the core loader in the worker's entry point; the settings every process
shares (Redis URL, metrics port, logging) stay in :class:`agentmesh.core.settings.Settings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from agentmesh.core.settings import ENV_PREFIX, Check, load_settings

PREFIX: Final = ENV_PREFIX + "WORKER_"
"""Every worker setting's variable starts with this: ``threads`` ⇄ ``AGENTMESH_WORKER_THREADS``."""

MAX_THREADS: Final = 256
"""Most threads one worker process runs; scale further with processes (replicas)."""


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker process reads from its environment besides the shared settings."""

    threads: int = 8
    """Threads of the Dramatiq worker process: messages it works on at once."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerSettings:
        """Loads ``AGENTMESH_WORKER_*`` from ``environ`` (default: ``os.environ``)."""
        return load_settings(cls, environ, prefix=PREFIX)

    def checks(self) -> list[Check]:
        """Range checks of the worker settings."""
        return [("threads", 1 <= self.threads <= MAX_THREADS, f"expected 1-{MAX_THREADS}")]
