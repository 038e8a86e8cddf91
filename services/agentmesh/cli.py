"""The ``agentmesh`` command: operator and developer utilities.

    agentmesh token --tenant acme [--subject alice] [--ttl-s 3600]

mints a development bearer token (HS256). The secret comes from
``AGENTMESH_AUTH_HS256_SECRET`` or, when unset, from the one ``make dev`` keeps at
``.data/auth/hs256.secret``, so the printed token works against the local mesh.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from agentmesh.core.auth import TENANT_PATTERN, mint_token
from agentmesh.core.settings import ConfigError, Settings, env_var
from agentmesh.devstack.paths import repo_root

DEV_SECRET_PATH = Path(".data") / "auth" / "hs256.secret"
"""Where ``make dev`` keeps its generated secret, relative to the repository root."""


def _secret(settings: Settings) -> str:
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


def _token(args: argparse.Namespace) -> int:
    settings = Settings.from_env(service="conductor")
    if not 1 <= args.ttl_s <= settings.auth_max_token_lifetime_s:
        # The services would refuse it: say so now rather than at the first call.
        raise ConfigError(
            f"--ttl-s {args.ttl_s}: expected 1-{settings.auth_max_token_lifetime_s}"
            f" ({env_var('auth_max_token_lifetime_s')}, the longest lifetime the services"
            " accept)"
        )
    token = mint_token(
        _secret(settings),
        args.tenant,
        args.subject,
        args.ttl_s,
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        tenant_claim=settings.auth_tenant_claim,
    )
    print(token)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="agentmesh", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="mint a development bearer token (HS256)")
    token.add_argument("--tenant", required=True, help="tenant the token is for")
    token.add_argument("--subject", default="dev", help="the token's subject (default: dev)")
    token.add_argument(
        "--ttl-s", type=int, default=3600, help="lifetime in seconds (default: 3600)"
    )
    token.set_defaults(run=_token)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agentmesh`` script."""
    args = build_parser().parse_args(argv)
    if getattr(args, "tenant", None) is not None and not TENANT_PATTERN.fullmatch(args.tenant):
        print(
            f"agentmesh: --tenant {args.tenant!r} is not a tenant id the services accept:"
            " 1-128 letters, digits and ._@- starting with a letter or digit",
            file=sys.stderr,
        )
        return 2
    try:
        result: int = args.run(args)
    except ConfigError as exc:
        print(f"agentmesh: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
