"""`agentmesh token` mints a token the services accept."""

from __future__ import annotations

import pytest

from agentmesh.cli import main
from agentmesh.core.auth import Authenticator

SECRET = "unit-test-secret-of-at-least-32-bytes!"


def test_token_verifies_with_the_same_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AGENTMESH_AUTH_HS256_SECRET", SECRET)
    assert main(["token", "--tenant", "acme", "--subject", "alice", "--ttl-s", "60"]) == 0
    token = capsys.readouterr().out.strip()
    authenticator = Authenticator(
        hs256_secret=SECRET,
        jwks=None,
        issuer="agentmesh",
        audience="agentmesh",
        tenant_claim="tenant",
    )
    principal = authenticator.authenticate(f"Bearer {token}")
    assert (principal.tenant, principal.subject) == ("acme", "alice")


@pytest.mark.parametrize("tenant", [" ", "", "a:b", "x" * 129])
def test_a_tenant_the_services_would_refuse_is_refused_at_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tenant: str
) -> None:
    monkeypatch.setenv("AGENTMESH_AUTH_HS256_SECRET", SECRET)
    assert main(["token", "--tenant", tenant]) == 2
    assert "--tenant" in capsys.readouterr().err


@pytest.mark.parametrize(("ttl_s", "limit"), [("86401", None), ("0", None), ("601", "600")])
def test_a_lifetime_the_services_would_refuse_is_refused_at_once(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    ttl_s: str,
    limit: str | None,
) -> None:
    monkeypatch.setenv("AGENTMESH_AUTH_HS256_SECRET", SECRET)
    if limit is not None:
        monkeypatch.setenv("AGENTMESH_AUTH_MAX_TOKEN_LIFETIME_S", limit)
    assert main(["token", "--tenant", "acme", "--ttl-s", ttl_s]) == 2
    error = capsys.readouterr().err
    assert "AGENTMESH_AUTH_MAX_TOKEN_LIFETIME_S" in error
