"""Settings: defaults per service, parsing, and the messages of missing/bad settings."""

from __future__ import annotations

import pytest

from agentmesh.core.settings import ConfigError, Settings

pytestmark = pytest.mark.unit


def test_defaults_depend_on_the_service() -> None:
    memory = Settings.from_env({}, service="memory")
    worker = Settings.from_env({}, service="worker")

    assert (memory.grpc_port, memory.metrics_port) == (50054, 9104)
    assert (worker.grpc_port, worker.metrics_port) == (0, 9105)
    assert memory.env == "prod"
    assert memory.grpc_host == "127.0.0.1"
    assert memory.max_message_bytes == 4 * 1024 * 1024
    assert memory.database_url is None
    assert (memory.auth_issuer, memory.auth_audience, memory.auth_tenant_claim) == (
        "agentmesh",
        "agentmesh",
        "tenant",
    )


def test_values_are_parsed_to_the_field_types() -> None:
    settings = Settings.from_env(
        {
            "AGENTMESH_ENV": "dev",
            "AGENTMESH_GRPC_PORT": "6000",
            "AGENTMESH_DRAIN_GRACE_S": "2.5",
            "AGENTMESH_DATABASE_URL": "postgresql://postgres@/postgres?host=/tmp/pg",
            "AGENTMESH_METRICS_PORT": "",  # empty means unset: the default stays
        },
        service="agent",
    )

    assert settings.env == "dev"
    assert settings.grpc_port == 6000
    assert settings.drain_grace_s == 2.5
    assert settings.database_url == "postgresql://postgres@/postgres?host=/tmp/pg"
    assert settings.metrics_port == 9102


def test_unparseable_values_name_every_variable() -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(
            {"AGENTMESH_GRPC_PORT": "fifty", "AGENTMESH_HEALTH_INTERVAL_S": "soon"},
            service="job",
        )

    message = str(raised.value)
    assert "AGENTMESH_GRPC_PORT='fifty': expected an integer" in message
    assert "AGENTMESH_HEALTH_INTERVAL_S='soon': expected a number" in message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AGENTMESH_ENV", "staging"),
        ("AGENTMESH_GRPC_PORT", "70000"),
        ("AGENTMESH_LOG_LEVEL", "loud"),
        ("AGENTMESH_DB_POOL_MAX_SIZE", "0"),
    ],
)
def test_out_of_range_values_are_refused(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: value}, service="memory")


def test_unknown_service_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown service 'billing'"):
        Settings.from_env({}, service="billing")


def test_require_names_the_missing_variables() -> None:
    settings = Settings.from_env({"AGENTMESH_REDIS_URL": "redis://x"}, service="memory")

    settings.require("redis_url")
    with pytest.raises(ConfigError) as raised:
        settings.require("database_url", "redis_url", "agent_addr")

    assert str(raised.value) == (
        "memory: missing required setting(s): AGENTMESH_DATABASE_URL, AGENTMESH_AGENT_ADDR"
    )


def test_require_auth_needs_a_secret_or_a_jwks_file() -> None:
    with pytest.raises(ConfigError, match="AGENTMESH_AUTH_HS256_SECRET"):
        Settings.from_env({}, service="conductor").require_auth()

    Settings.from_env({"AGENTMESH_AUTH_JWKS_FILE": "/k.json"}, service="conductor").require_auth()
    secret = {"AGENTMESH_AUTH_HS256_SECRET": "s" * 32}
    Settings.from_env(secret, service="conductor").require_auth()


@pytest.mark.parametrize("secret", ["short-secret", "x" * 31, "é" * 15, "s3cr3t!"])
def test_an_hs256_secret_under_32_bytes_is_refused_without_printing_it(secret: str) -> None:
    with pytest.raises(ConfigError, match="AGENTMESH_AUTH_HS256_SECRET=<redacted>") as raised:
        Settings.from_env({"AGENTMESH_AUTH_HS256_SECRET": secret}, service="memory")
    assert secret not in str(raised.value)


@pytest.mark.parametrize("value", ["59", str(30 * 86_400 + 1)])
def test_the_token_lifetime_limit_is_bounded(value: str) -> None:
    with pytest.raises(ConfigError, match="AGENTMESH_AUTH_MAX_TOKEN_LIFETIME_S"):
        Settings.from_env({"AGENTMESH_AUTH_MAX_TOKEN_LIFETIME_S": value}, service="memory")


def test_otlp_endpoint_falls_back_to_the_standard_variable() -> None:
    standard = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}
    ours = {**standard, "AGENTMESH_OTLP_ENDPOINT": "http://other:4317"}

    assert Settings.from_env({}, service="job").otlp_endpoint is None
    assert Settings.from_env(standard, service="job").otlp_endpoint == "http://collector:4317"
    assert Settings.from_env(ours, service="job").otlp_endpoint == "http://other:4317"
