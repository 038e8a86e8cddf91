"""Settings of the Job service (``AGENTMESH_JOB_*``) and of its Dramatiq workers
(``AGENTMESH_WORKER_*``).

Loaded by the core loader in each entry point; the settings every process shares
(Redis URL, metrics port, logging) stay in :class:`agentmesh.core.settings.Settings`.
The lease settings are read by both: the service's reaper and the workers must agree
on them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from agentmesh.core.settings import ENV_PREFIX, Check, load_settings

JOB_PREFIX: Final = ENV_PREFIX + "JOB_"
"""Every Job setting's variable starts with this: ``lease_s`` ⇄ ``AGENTMESH_JOB_LEASE_S``."""
PREFIX: Final = ENV_PREFIX + "WORKER_"
"""Every worker setting's variable starts with this: ``threads`` ⇄ ``AGENTMESH_WORKER_THREADS``."""

MAX_THREADS: Final = 256
"""Most threads one worker process runs; scale further with processes (replicas)."""


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker process reads from its environment besides the shared settings."""

    threads: int = 8
    """Threads of the Dramatiq worker process: messages it works on at once."""

    job_timeout_s: float = 3600.0
    """Longest one attempt of a job may run; past it the attempt fails
    (DEADLINE_EXCEEDED) and is retried as the job's policy says."""

    progress_interval_s: float = 0.5
    """A running job's progress is written at most this often (and at its end)."""

    shutdown_grace_s: float = 10.0
    """On SIGTERM, how long running jobs may take to finish before the worker hands
    them back (another worker continues them from their last checkpoint)."""

    signing_key_file: str = ""
    """PEM private key (RS256) the worker signs its calls to the Agent service with,
    as the job's tenant; its public key belongs in the services' JWKS. Without it the
    worker signs with ``AGENTMESH_AUTH_HS256_SECRET`` (development)."""

    signing_key_id: str = ""
    """The ``kid`` of ``signing_key_file``'s key in the JWKS."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerSettings:
        """Loads ``AGENTMESH_WORKER_*`` from ``environ`` (default: ``os.environ``)."""
        return load_settings(cls, environ, prefix=PREFIX)

    def checks(self) -> list[Check]:
        """Range checks of the worker settings."""
        return [
            ("threads", 1 <= self.threads <= MAX_THREADS, f"expected 1-{MAX_THREADS}"),
            ("job_timeout_s", 1 <= self.job_timeout_s <= 7 * 86_400, "1 s - 7 days"),
            ("progress_interval_s", 0 <= self.progress_interval_s <= 60, "expected 0-60"),
            ("shutdown_grace_s", 0 <= self.shutdown_grace_s <= 3600, "expected 0-3600"),
            (
                "signing_key_id",
                bool(self.signing_key_id) or not self.signing_key_file,
                "required with AGENTMESH_WORKER_SIGNING_KEY_FILE",
            ),
        ]


MAX_START_DELAY_S: Final = 7 * 86_400
"""Longest ``Job.start_delay``."""


@dataclass(frozen=True)
class JobSettings:
    """What the Job service (and its workers' lease keeping) read from the environment."""

    tenant_active_jobs: int = 1000
    """Jobs one tenant may have that have not ended (pending, running, waiting for
    input, cancelling); past it CreateJob is RESOURCE_EXHAUSTED. 0: no limit."""

    max_input_bytes: int = 256 * 1024
    """Largest job input: the structured input as JSON plus the parts, in bytes (the
    Agent service's own limit, ``AGENTMESH_AGENT_MAX_INPUT_BYTES``, also applies)."""

    request_id_ttl_s: int = 86_400
    """How long CreateJob remembers a ``request_id`` (and replays its answer)."""

    lease_s: float = 10.0
    """How long a worker's claim on a running job lasts without renewal. A worker
    renews it every third of this; a job whose lease expired (its worker died) is
    handed to another worker, so this bounds how long a dead worker's job waits."""

    sweep_interval_s: float = 1.0
    """How often the sweeper (one Job replica at a time) dispatches due jobs and hands
    back the jobs of expired leases."""

    redispatch_after_s: float = 30.0
    """A pending job whose message no worker took for this long is dispatched again
    (a message lost with Redis; the claim makes duplicates harmless)."""

    agent_card_ttl_s: float = 30.0
    """How long the service keeps an agent's card (its input schema) before asking the
    Agent service again."""

    tenant_watches: int = 100
    """WatchJob streams one tenant may hold open at once, per replica."""

    watch_poll_s: float = 5.0
    """A watch reads the job again at least this often, even without a change
    notification (notifications go through Redis and may be lost)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> JobSettings:
        """Loads ``AGENTMESH_JOB_*`` from ``environ`` (default: ``os.environ``)."""
        return load_settings(cls, environ, prefix=JOB_PREFIX)

    def checks(self) -> list[Check]:
        """Range checks of the Job settings."""
        return [
            ("tenant_active_jobs", self.tenant_active_jobs >= 0, "expected >= 0"),
            ("max_input_bytes", 1 <= self.max_input_bytes <= 4 * 1024 * 1024, "1 B - 4 MiB"),
            ("request_id_ttl_s", 60 <= self.request_id_ttl_s <= 30 * 86_400, "60 s - 30 days"),
            ("lease_s", 0.5 <= self.lease_s <= 3600, "expected 0.5-3600"),
            ("sweep_interval_s", 0.05 <= self.sweep_interval_s <= 60, "expected 0.05-60"),
            ("redispatch_after_s", 0.5 <= self.redispatch_after_s <= 3600, "0.5-3600"),
            ("agent_card_ttl_s", 0 <= self.agent_card_ttl_s <= 3600, "expected 0-3600"),
            ("tenant_watches", 1 <= self.tenant_watches <= 100_000, "expected 1-100000"),
            ("watch_poll_s", 0.05 <= self.watch_poll_s <= 60, "expected 0.05-60"),
        ]
