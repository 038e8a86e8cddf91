"""Development bearer tokens (HS256), minted from the dev mesh's signing secret.

The secret comes from ``AGENTMESH_AUTH_HS256_SECRET`` or, when unset, from the one
``make dev`` keeps at ``.data/auth/hs256.secret``, so a minted token works against the
local mesh.
"""

from __future__ import annotations

from pathlib import Path

from agentmesh.core.auth import TENANT_PATTERN, mint_token
from agentmesh.core.settings import ConfigError, Settings, env_var
from agentmesh.devstack.paths import repo_root

DEV_SECRET_PATH = Path(".data") / "auth" / "hs256.secret"
"""Where ``make dev`` keeps its generated secret, relative to the repository root."""

TENANT_RULE = "1-128 letters, digits and ._@- starting with a letter or digit"
"""What a tenant id the services accept looks like (``TENANT_PATTERN``), in words."""


def check_tenant(tenant: str) -> str:
    """``tenant`` when the services would accept it; ConfigError otherwise."""
    if not TENANT_PATTERN.fullmatch(tenant):
        raise ConfigError(
            f"--tenant {tenant!r} is not a tenant id the services accept: {TENANT_RULE}"
        )
    return tenant


def dev_secret(settings: Settings) -> str:
    """The HS256 signing secret: the setting, else the one ``make dev`` created."""
    if settings.auth_hs256_secret:
        return settings.auth_hs256_secret
    try:
        path = repo_root() / DEV_SECRET_PATH
    except FileNotFoundError:
        path = DEV_SECRET_PATH
    if path.is_file():
        return path.read_text().strip()
    raise ConfigError(
        f"no signing secret: set {env_var('auth_hs256_secret')} or start `make dev` once "
        f"(it creates {DEV_SECRET_PATH})"
    )


def dev_token(tenant: str, subject: str = "dev", ttl_s: int = 3600) -> str:
    """A token for ``tenant`` signed with the dev secret, with the services' issuer,
    audience and tenant claim. ConfigError when the services would refuse it or there
    is no secret."""
    check_tenant(tenant)
    settings = Settings.from_env(service="conductor")
    if not 1 <= ttl_s <= settings.auth_max_token_lifetime_s:
        # The services would refuse it: say so now rather than at the first call.
        raise ConfigError(
            f"--ttl-s {ttl_s}: expected 1-{settings.auth_max_token_lifetime_s}"
            f" ({env_var('auth_max_token_lifetime_s')}, the longest lifetime the services"
            " accept)"
        )
    return mint_token(
        dev_secret(settings),
        tenant,
        subject,
        ttl_s,
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        tenant_claim=settings.auth_tenant_claim,
    )
