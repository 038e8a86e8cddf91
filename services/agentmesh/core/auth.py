"""Bearer-token authentication: JWT (HS256 shared secret and/or RS256 via a JWKS file).

The tenant of every request comes from the verified token (``tenant`` claim by default),
never from a request field. Verified tokens are cached by their raw text until they
expire, so the interceptor pays for signature checks once per token, not once per call.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt

from agentmesh.core.errors import Unauthenticated
from agentmesh.core.settings import ConfigError, Settings, env_var

_BEARER_PREFIX_LEN: Final = len("bearer ")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as established by a verified token."""

    tenant: str
    subject: str


class Authenticator:
    """Verifies ``authorization: Bearer <jwt>`` values and returns the :class:`Principal`.

    Checks the signature (HS256 with the shared secret, RS256 with the JWKS key named by
    the token's ``kid``), ``exp``, ``iss``, ``aud`` and a non-empty string tenant claim.
    The JWKS file is read once: rotating keys means restarting (rolling) the servers.
    """

    def __init__(
        self,
        *,
        hs256_secret: str | None = None,
        jwks: jwt.PyJWKSet | None = None,
        issuer: str = "agentmesh",
        audience: str = "agentmesh",
        tenant_claim: str = "tenant",
        leeway_s: float = 5.0,
        cache_size: int = 4096,
    ) -> None:
        if not hs256_secret and jwks is None:
            raise ValueError("an Authenticator needs an HS256 secret and/or a JWKS")
        self._secret = hs256_secret
        self._jwks = jwks
        self._issuer = issuer
        self._audience = audience
        self._tenant_claim = tenant_claim
        self._leeway_s = leeway_s
        self._cache_size = cache_size
        # raw token -> (principal, exp); ordered oldest-used first for LRU eviction.
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        """Build from ``auth_*`` settings; a missing or unusable JWKS file is a ConfigError."""
        settings.require_auth()
        jwks = None
        if settings.auth_jwks_file:
            try:
                jwks = jwt.PyJWKSet.from_json(Path(settings.auth_jwks_file).read_text())
            except (OSError, ValueError, jwt.PyJWTError) as exc:
                raise ConfigError(
                    f"{env_var('auth_jwks_file')}={settings.auth_jwks_file!r}: "
                    f"cannot load JWKS: {exc}"
                ) from exc
        return cls(
            hs256_secret=settings.auth_hs256_secret,
            jwks=jwks,
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
            tenant_claim=settings.auth_tenant_claim,
        )

    def authenticate(self, authorization: str | None) -> Principal:
        """Verify an ``authorization`` header value; raise :class:`Unauthenticated` if bad."""
        if not authorization:
            raise Unauthenticated("missing bearer token", reason="MISSING_TOKEN")
        if authorization[:_BEARER_PREFIX_LEN].lower() != "bearer ":
            raise Unauthenticated(
                "authorization must be 'Bearer <token>'", reason="MALFORMED_AUTHORIZATION"
            )
        token = authorization[_BEARER_PREFIX_LEN:].strip()
        cached = self._cache.get(token)
        if cached is not None:
            principal, expires_at = cached
            if expires_at > time.time():
                self._cache.move_to_end(token)
                return principal
            del self._cache[token]
        principal, expires_at = self._verify(token)
        self._cache[token] = (principal, expires_at)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("bearer token is not a JWT", reason="MALFORMED_TOKEN") from None
        key = self._key_for(header)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[header["alg"]],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("bearer token expired", reason="TOKEN_EXPIRED") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                f"bearer token audience is not {self._audience!r}", reason="WRONG_AUDIENCE"
            ) from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(
                f"bearer token issuer is not {self._issuer!r}", reason="WRONG_ISSUER"
            ) from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated(
                "bearer token signature is invalid", reason="BAD_SIGNATURE"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(
                f"bearer token lacks the {exc.claim!r} claim", reason="MISSING_CLAIM"
            ) from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(
                f"bearer token is invalid: {exc}", reason="INVALID_TOKEN"
            ) from None
        tenant = claims.get(self._tenant_claim)
        if not isinstance(tenant, str) or not tenant:
            raise Unauthenticated(
                f"bearer token has no {self._tenant_claim!r} claim", reason="MISSING_TENANT"
            )
        subject = claims.get("sub")
        principal = Principal(tenant=tenant, subject=subject if isinstance(subject, str) else "")
        return principal, float(claims["exp"])

    def _key_for(self, header: dict[str, Any]) -> str | jwt.PyJWK:
        alg = header.get("alg")
        if alg == "HS256" and self._secret:
            return self._secret
        if alg == "RS256" and self._jwks is not None:
            kid = header.get("kid")
            if kid is None and len(self._jwks.keys) == 1:
                return self._jwks.keys[0]
            try:
                return self._jwks[str(kid)]
            except KeyError:
                raise Unauthenticated(
                    f"bearer token key id {kid!r} is not in the JWKS", reason="UNKNOWN_KEY"
                ) from None
        raise Unauthenticated(
            f"bearer token algorithm {alg!r} is not accepted", reason="UNSUPPORTED_ALGORITHM"
        )


def mint_token(
    secret: str,
    tenant: str,
    subject: str = "dev",
    ttl_s: int = 3600,
    *,
    issuer: str = "agentmesh",
    audience: str = "agentmesh",
    tenant_claim: str = "tenant",
) -> str:
    """An HS256 token for development and tests, accepted by an Authenticator with ``secret``."""
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        tenant_claim: tenant,
        "iat": now,
        "exp": now + ttl_s,
    }
    return jwt.encode(claims, secret, algorithm="HS256")
