"""Process settings, read once at start from ``AGENTMESH_*`` environment variables.

One loader, :func:`load_settings`, reads every settings class: a frozen dataclass whose
fields each map to one variable, the class's prefix + the field name in upper case.
:class:`Settings` holds what every process shares under ``AGENTMESH_`` (``grpc_port`` ⇄
``AGENTMESH_GRPC_PORT``); each service keeps its own class under its own prefix in its
package (``MemorySettings``: ``embedder`` ⇄ ``AGENTMESH_MEMORY_EMBEDDER``), and its
entry point loads it and passes it to the builder. An empty variable counts as unset. A
value that does not parse or is out of range, or a required setting that is missing,
fails the process at start with a :class:`ConfigError` naming the variables, never later
on first use.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Protocol, TypeVar

ENV_PREFIX: Final = "AGENTMESH_"

SERVICES: Final = ("conductor", "agent", "job", "memory", "worker")
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
MAX_TOKEN_LIFETIME_S: Final = 30 * 86_400
"""Longest token lifetime an operator may allow."""
_LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")


def otlp_endpoint(environ: Mapping[str, str]) -> str | None:
    """The OTLP collector a process in ``environ`` exports to, as ``Settings`` reads it:
    ``AGENTMESH_OTLP_ENDPOINT``, else OpenTelemetry's ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
    return (
        environ.get(f"{ENV_PREFIX}OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or None
    )


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the environment variables."""


def env_var(field_name: str, prefix: str = ENV_PREFIX) -> str:
    """The environment variable that carries ``field_name`` of a class under ``prefix``."""
    return prefix + field_name.upper()


Check = tuple[str, bool, str]
"""One range check of a loaded settings object: (field name, whether it holds, why not)."""


class SettingsClass(Protocol):
    """What :func:`load_settings` needs of a settings class: a frozen dataclass whose
    fields are ``str``, ``int``, ``float`` or ``... | None`` of one of them, and its checks."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    def checks(self) -> Sequence[Check]:
        """The range checks of the loaded values; each failing one is reported."""
        ...


S = TypeVar("S", bound=SettingsClass)


def require_settings(settings: object, who: str, prefix: str, *field_names: str) -> None:
    """Fail unless every named field of ``settings`` (a class under ``prefix``) is set
    (not None, not empty); the message names ``who`` needs them and their variables."""
    missing = [env_var(name, prefix) for name in field_names if not getattr(settings, name)]
    if missing:
        raise ConfigError(f"{who}: missing required setting(s): {', '.join(missing)}")


def load_settings(
    cls: type[S],
    environ: Mapping[str, str] | None = None,
    *,
    prefix: str,
    given: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> S:
    """Loads ``cls`` from ``environ`` (default: ``os.environ``), each field from its
    variable ``prefix + FIELD``; the one loader of every settings class.

    ``given`` fields are not read from the environment; ``defaults`` replace the class
    defaults of fields whose variable is unset. Raises :class:`ConfigError` listing every
    malformed or out-of-range variable at once.
    """
    source = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = dict(given or {})
    problems: list[str] = []
    for field in dataclasses.fields(cls):
        if field.name in values:
            continue
        variable = env_var(field.name, prefix)
        raw = source.get(variable, "")
        if raw == "":
            continue
        try:
            values[field.name] = _parse(hints[field.name], raw)
        except ValueError as exc:
            problems.append(f"{variable}={raw!r}: {exc}")
    if problems:
        raise ConfigError("invalid settings: " + "; ".join(problems))
    for name, value in (defaults or {}).items():
        values.setdefault(name, value)
    loaded = cls(**values)
    problems = [
        f"{env_var(name, prefix)}={_shown(name, getattr(loaded, name))}: {why}"
        for name, ok, why in loaded.checks()
        if not ok
    ]
    if problems:
        raise ConfigError("invalid settings: " + "; ".join(problems))
    return loaded


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

    db_acquire_timeout_ms: int = 5_000
    """Longest wait of a call for a pooled connection when all are busy; then it answers
    UNAVAILABLE (``DATABASE_BUSY``) instead of queueing until its deadline."""

    db_statement_timeout_ms: int = 30_000
    """PostgreSQL ``statement_timeout`` for every pooled connection; 0 disables it."""

    db_list_statement_timeout_ms: int = 5_000
    """Longest a list or search query may run before it is cancelled (DEADLINE_EXCEEDED,
    reason ``QUERY_TIMEOUT``): those are the queries a client can make expensive with a
    filter, so they get less time than ``db_statement_timeout_ms``; 0 disables it."""

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

    auth_max_token_lifetime_s: int = 86_400
    """Longest ``exp - iat`` a token may have; a token minted to live longer (or with no
    ``iat``) is refused, so a leaked token is useful for at most this long."""

    log_level: str = "info"
    """Lowest level written: debug, info, warning, error or critical."""

    otlp_endpoint: str | None = None
    """OTLP/gRPC collector, e.g. ``http://collector:4317``; falls back to the standard
    ``OTEL_EXPORTER_OTLP_ENDPOINT``; unset means spans are not exported."""

    max_message_bytes: int = 4 * 1024 * 1024
    """Largest gRPC message sent or received, in bytes."""

    page_max_bytes: int = 2 * 1024 * 1024
    """Byte budget of one list or search response: a page stops at this many bytes of
    items as well as at its page size (the next page token continues from there), so no
    response is assembled beyond it. At most half of ``max_message_bytes``: sizes are
    estimated from the stored data, and a single item is always sent."""

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

    max_concurrent_streams: int = 100
    """Most calls one client connection may have in flight on a server (HTTP/2
    ``SETTINGS_MAX_CONCURRENT_STREAMS``): one connection cannot take every handler."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, service: str) -> Settings:
        """Load settings for ``service`` from ``environ`` (default: ``os.environ``).

        Raises :class:`ConfigError` listing every malformed variable at once. Requirements
        that depend on the process (a database URL, credentials) are checked by
        :meth:`require` and :meth:`require_auth`, called by whoever needs them.
        """
        if service not in SERVICES:
            raise ConfigError(f"unknown service {service!r}; expected one of {SERVICES}")
        source = os.environ if environ is None else environ
        defaults: dict[str, Any] = {
            "grpc_port": _DEFAULT_GRPC_PORTS.get(service, 0),
            "metrics_port": _DEFAULT_METRICS_PORTS[service],
        }
        if source.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            defaults["otlp_endpoint"] = source["OTEL_EXPORTER_OTLP_ENDPOINT"]
        return load_settings(
            cls, source, prefix=ENV_PREFIX, given={"service": service}, defaults=defaults
        )

    def require(self, *field_names: str) -> None:
        """Fail unless every named field is set (not None, not empty)."""
        require_settings(self, self.service, ENV_PREFIX, *field_names)

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

    def checks(self) -> list[Check]:
        """Range checks of the shared settings."""
        return [
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
            ("db_acquire_timeout_ms", self.db_acquire_timeout_ms > 0, "expected > 0"),
            ("max_message_bytes", self.max_message_bytes > 0, "expected > 0"),
            (
                "page_max_bytes",
                0 < self.page_max_bytes <= self.max_message_bytes // 2,
                "expected > 0 and at most half of AGENTMESH_MAX_MESSAGE_BYTES",
            ),
            (
                "db_list_statement_timeout_ms",
                self.db_list_statement_timeout_ms >= 0,
                "expected >= 0",
            ),
            ("drain_grace_s", self.drain_grace_s >= 0, "expected >= 0"),
            ("keepalive_time_s", self.keepalive_time_s > 0, "expected > 0"),
            ("health_interval_s", self.health_interval_s > 0, "expected > 0"),
            ("health_probe_timeout_s", self.health_probe_timeout_s > 0, "expected > 0"),
            ("client_deadline_ms", self.client_deadline_ms > 0, "expected > 0"),
            ("max_concurrent_streams", self.max_concurrent_streams > 0, "expected > 0"),
            (
                "auth_max_token_lifetime_s",
                60 <= self.auth_max_token_lifetime_s <= MAX_TOKEN_LIFETIME_S,
                f"expected 60-{MAX_TOKEN_LIFETIME_S} (30 days)",
            ),
            (
                "auth_hs256_secret",
                not self.auth_hs256_secret or len(self.auth_hs256_secret.encode()) >= 32,
                "expected at least 32 bytes (RFC 7518: an HS256 key of 256 bits)",
            ),
        ]


def _shown(name: str, value: object) -> str:
    """A value as an error message may print it: secrets never are."""
    if any(marker in name for marker in ("secret", "api_key", "password")):
        return "<redacted>"
    return repr(value)


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
