"""Process settings, read once at start from ``AGENTMESH_*`` environment variables.

Every field of :class:`Settings` maps to one variable: ``AGENTMESH_`` + the field name in
upper case (``grpc_port`` ⇄ ``AGENTMESH_GRPC_PORT``). An empty variable counts as unset.
A value that does not parse, or a required setting that is missing, fails the process at
start with a :class:`ConfigError` naming the variables, never later on first use.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

ENV_PREFIX: Final = "AGENTMESH_"

SERVICES: Final = ("conductor", "agent", "job", "memory", "worker")
_EMBEDDERS: Final = ("hash", "minilm", "openai")
"""Processes that load settings; ``service`` picks the per-process port defaults."""

_DEFAULT_GRPC_PORTS: Final = {"conductor": 50051, "agent": 50052, "job": 50053, "memory": 50054}
_DEFAULT_METRICS_PORTS: Final = {
    "conductor": 9101,
    "agent": 9102,
    "job": 9103,
    "memory": 9104,
    "worker": 9105,
}
_ENVIRONMENTS: Final = ("dev", "prod")
_LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
MAX_SESSION_PURGE_AFTER_S: Final = 10 * 365 * 86_400
"""Longest purge window of deleted sessions; keeps ``now() + window`` a sane timestamp."""
MAX_JANITOR_INTERVAL_S: Final = 86_400
"""Longest pause between janitor passes: a day (a longer one is as good as disabled)."""
MAX_JANITOR_BATCH_SIZE: Final = 100_000
"""Largest janitor batch: bounds how long one delete transaction holds its locks."""


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the environment variables."""


def env_var(field_name: str) -> str:
    """The environment variable that carries ``field_name``."""
    return ENV_PREFIX + field_name.upper()


@dataclass(frozen=True)
class Settings:
    """Everything a process needs from its environment; see the module docstring."""

    service: str
    """Which process this is: conductor, agent, job, memory or worker."""

    env: str = "prod"
    """``dev`` (local ``make dev`` mesh) or ``prod``."""

    grpc_host: str = "127.0.0.1"
    """Interface the gRPC server binds; ``0.0.0.0`` in containers."""

    grpc_port: int = 0
    """gRPC server port; defaults 50051-50054 per service, 0 picks a free port."""

    metrics_port: int = 0
    """Prometheus ``/metrics`` HTTP port; defaults 9101-9105 per service, 0 disables it."""

    database_url: str | None = None
    """PostgreSQL URL; a unix socket goes in the query: ``postgresql://u@/db?host=/dir``."""

    db_pool_min_size: int = 1
    """Connections the asyncpg pool opens at start and keeps."""

    db_pool_max_size: int = 10
    """Upper bound of connections in the asyncpg pool."""

    db_statement_timeout_ms: int = 30_000
    """PostgreSQL ``statement_timeout`` for every pooled connection; 0 disables it."""

    redis_url: str | None = None
    """Redis URL, e.g. ``redis://127.0.0.1:6379/0``."""

    memory_addr: str | None = None
    """``host:port`` of the Memory service (usually Envoy's internal listener)."""

    agent_addr: str | None = None
    """``host:port`` of the Agent service (usually Envoy's internal listener)."""

    job_addr: str | None = None
    """``host:port`` of the Job service (usually Envoy's internal listener)."""

    conductor_addr: str | None = None
    """``host:port`` of the Conductor service (usually Envoy's internal listener)."""

    auth_hs256_secret: str | None = None
    """Shared secret for HS256 bearer tokens."""

    auth_jwks_file: str | None = None
    """Path to a JWKS JSON document whose keys verify RS256 bearer tokens (by ``kid``)."""

    auth_issuer: str = "agentmesh"
    """Required ``iss`` claim."""

    auth_audience: str = "agentmesh"
    """Required ``aud`` claim."""

    auth_tenant_claim: str = "tenant"
    """Claim that carries the tenant; tokens without it are refused."""

    log_level: str = "info"
    """Lowest level written: debug, info, warning, error or critical."""

    otlp_endpoint: str | None = None
    """OTLP/gRPC collector, e.g. ``http://collector:4317``; falls back to the standard
    ``OTEL_EXPORTER_OTLP_ENDPOINT``; unset means spans are not exported."""

    max_message_bytes: int = 4 * 1024 * 1024
    """Largest gRPC message sent or received, in bytes."""

    drain_grace_s: float = 10.0
    """Seconds in-flight RPCs get to finish after SIGTERM; keep below the pod's
    ``terminationGracePeriodSeconds``."""

    keepalive_time_s: int = 30
    """Interval of HTTP/2 keepalive pings, servers and client channels alike."""

    health_interval_s: float = 1.0
    """Seconds between two runs of the dependency probes behind gRPC health."""

    health_probe_timeout_s: float = 2.0
    """A probe round that takes longer than this counts as failed."""

    client_deadline_ms: int = 10_000
    """Deadline given to outgoing calls whose caller set none."""

    # -- Memory service ---------------------------------------------------------------

    memory_embedder: str = "hash"
    """Embedder of memories: ``hash`` (deterministic, no model; dev and tests),
    ``minilm`` (local all-MiniLM-L6-v2, the ``minilm`` extra) or ``openai`` (an
    OpenAI-compatible ``/v1/embeddings`` endpoint)."""

    memory_embedding_dim: int = 384
    """Dimension of stored vectors; must match the embedder and the vector column."""

    memory_embedder_url: str | None = None
    """Base URL of the OpenAI-compatible embeddings API, e.g. ``https://api.openai.com/v1``."""

    memory_embedder_model: str = "text-embedding-3-small"
    """Model name sent to the OpenAI-compatible embeddings API."""

    memory_embedder_api_key: str | None = None
    """Bearer key for the OpenAI-compatible embeddings API."""

    memory_hnsw_m: int = 16
    """pgvector HNSW ``m`` (graph degree) of the memories index."""

    memory_hnsw_ef_construction: int = 64
    """pgvector HNSW ``ef_construction`` of the memories index."""

    memory_hnsw_ef_search: int = 100
    """pgvector ``hnsw.ef_search`` for searches; higher is slower and more exact."""

    memory_merge_similarity: float = 0.95
    """Cosine similarity above which a new memory updates a near-duplicate instead."""

    memory_checkpoint_keep_latest: int = 50
    """Checkpoints kept per thread and namespace (older ones are pruned); 0 keeps all."""

    memory_artifact_max_bytes: int = 2 * 1024 * 1024
    """Largest artifact version content, in bytes."""

    memory_working_ttl_s: int = 86_400
    """Default time to live of a session's working memory."""

    memory_working_max_keys: int = 1000
    """Most keys one session's working memory may hold."""

    memory_working_max_bytes: int = 1024 * 1024
    """Largest total size of one session's working memory: the sum, over its keys, of
    the key's length and its value's length as JSON, in bytes."""

    memory_request_id_ttl_s: int = 86_400
    """How long idempotency keys (``request_id``) are remembered."""

    memory_session_purge_after_s: int = 7 * 86_400
    """How long a deleted session is kept (soft delete, AIP-164) before the janitor
    purges it; UndeleteSession restores it until then. 0 deletes at once (no undelete)."""

    memory_janitor_interval_s: float = 60.0
    """Seconds between two passes of the Memory janitor (purges expired memories, request
    ids and store items, and deleted sessions past their purge time); 0 disables it."""

    memory_janitor_batch_size: int = 1000
    """Rows one janitor statement deletes at most, each batch its own transaction
    (deleted sessions go at most 100 at a time: each takes its history with it)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, service: str) -> Settings:
        """Load settings for ``service`` from ``environ`` (default: ``os.environ``).

        Raises :class:`ConfigError` listing every malformed variable at once. Requirements
        that depend on the process (a database URL, credentials) are checked by
        :meth:`require` and :meth:`require_auth`, called by whoever needs them.
        """
        source = os.environ if environ is None else environ
        if service not in SERVICES:
            raise ConfigError(f"unknown service {service!r}; expected one of {SERVICES}")
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {"service": service}
        problems: list[str] = []
        for field in dataclasses.fields(cls):
            if field.name == "service":
                continue
            raw = source.get(env_var(field.name), "")
            if raw == "":
                continue
            try:
                values[field.name] = _parse(hints[field.name], raw)
            except ValueError as exc:
                problems.append(f"{env_var(field.name)}={raw!r}: {exc}")
        values.setdefault("grpc_port", _DEFAULT_GRPC_PORTS.get(service, 0))
        values.setdefault("metrics_port", _DEFAULT_METRICS_PORTS[service])
        if "otlp_endpoint" not in values and source.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            values["otlp_endpoint"] = source["OTEL_EXPORTER_OTLP_ENDPOINT"]
        if problems:
            raise ConfigError("invalid settings: " + "; ".join(problems))
        settings = cls(**values)
        settings._validate()
        return settings

    def require(self, *field_names: str) -> None:
        """Fail unless every named field is set (not None, not empty)."""
        missing = [env_var(name) for name in field_names if not getattr(self, name)]
        if missing:
            raise ConfigError(f"{self.service}: missing required setting(s): {', '.join(missing)}")

    def require_auth(self) -> None:
        """Fail unless at least one way to verify bearer tokens is configured.

        Every gRPC server calls this (``start_server`` does): a server that cannot
        authenticate cannot scope requests by tenant.
        """
        if not (self.auth_hs256_secret or self.auth_jwks_file):
            raise ConfigError(
                f"{self.service}: set {env_var('auth_hs256_secret')} and/or "
                f"{env_var('auth_jwks_file')} to verify bearer tokens"
            )

    def _validate(self) -> None:
        checks: list[tuple[str, bool, str]] = [
            ("env", self.env in _ENVIRONMENTS, f"expected one of {_ENVIRONMENTS}"),
            ("log_level", self.log_level in _LOG_LEVELS, f"expected one of {_LOG_LEVELS}"),
            ("grpc_port", 0 <= self.grpc_port <= 65535, "expected 0-65535"),
            ("metrics_port", 0 <= self.metrics_port <= 65535, "expected 0-65535"),
            ("db_pool_min_size", self.db_pool_min_size >= 0, "expected >= 0"),
            (
                "db_pool_max_size",
                self.db_pool_max_size >= max(1, self.db_pool_min_size),
                "expected >= 1 and >= AGENTMESH_DB_POOL_MIN_SIZE",
            ),
            ("db_statement_timeout_ms", self.db_statement_timeout_ms >= 0, "expected >= 0"),
            ("max_message_bytes", self.max_message_bytes > 0, "expected > 0"),
            ("drain_grace_s", self.drain_grace_s >= 0, "expected >= 0"),
            ("keepalive_time_s", self.keepalive_time_s > 0, "expected > 0"),
            ("health_interval_s", self.health_interval_s > 0, "expected > 0"),
            ("health_probe_timeout_s", self.health_probe_timeout_s > 0, "expected > 0"),
            ("client_deadline_ms", self.client_deadline_ms > 0, "expected > 0"),
            (
                "memory_embedder",
                self.memory_embedder in _EMBEDDERS,
                f"expected one of {_EMBEDDERS}",
            ),
            ("memory_embedding_dim", 1 <= self.memory_embedding_dim <= 16_000, "expected 1-16000"),
            ("memory_hnsw_m", 2 <= self.memory_hnsw_m <= 100, "expected 2-100"),
            (
                "memory_hnsw_ef_construction",
                self.memory_hnsw_ef_construction >= 2 * self.memory_hnsw_m,
                "expected >= 2 x AGENTMESH_MEMORY_HNSW_M",
            ),
            ("memory_hnsw_ef_search", 1 <= self.memory_hnsw_ef_search <= 1000, "expected 1-1000"),
            (
                "memory_merge_similarity",
                0.0 < self.memory_merge_similarity <= 1.0,
                "expected in (0, 1]",
            ),
            ("memory_checkpoint_keep_latest", self.memory_checkpoint_keep_latest >= 0, ">= 0"),
            ("memory_artifact_max_bytes", self.memory_artifact_max_bytes > 0, "expected > 0"),
            ("memory_working_ttl_s", self.memory_working_ttl_s > 0, "expected > 0"),
            ("memory_working_max_keys", self.memory_working_max_keys > 0, "expected > 0"),
            ("memory_working_max_bytes", self.memory_working_max_bytes > 0, "expected > 0"),
            ("memory_request_id_ttl_s", self.memory_request_id_ttl_s > 0, "expected > 0"),
            (
                "memory_session_purge_after_s",
                0 <= self.memory_session_purge_after_s <= MAX_SESSION_PURGE_AFTER_S,
                f"expected 0-{MAX_SESSION_PURGE_AFTER_S} (10 years)",
            ),
            (
                "memory_janitor_interval_s",
                0 <= self.memory_janitor_interval_s <= MAX_JANITOR_INTERVAL_S,
                f"expected 0-{MAX_JANITOR_INTERVAL_S} (0 disables the janitor)",
            ),
            (
                "memory_janitor_batch_size",
                1 <= self.memory_janitor_batch_size <= MAX_JANITOR_BATCH_SIZE,
                f"expected 1-{MAX_JANITOR_BATCH_SIZE}",
            ),
        ]
        problems = [
            f"{env_var(name)}={getattr(self, name)!r}: {why}" for name, ok, why in checks if not ok
        ]
        if problems:
            raise ConfigError("invalid settings: " + "; ".join(problems))


def _parse(annotation: object, raw: str) -> object:
    """Convert one raw variable to the field's type (``T`` or ``T | None``)."""
    if isinstance(annotation, types.UnionType):
        (annotation,) = (arg for arg in typing.get_args(annotation) if arg is not type(None))
    parser = _PARSERS.get(annotation)
    if parser is None:  # pragma: no cover - guards against adding a field of a new type
        raise TypeError(f"no parser for settings type {annotation!r}")
    return parser(raw.strip())


def _parse_int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("expected an integer") from None


def _parse_float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError("expected a number") from None


_PARSERS: Final[dict[object, Callable[[str], object]]] = {
    str: str,
    int: _parse_int,
    float: _parse_float,
}
