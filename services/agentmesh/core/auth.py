"""Bearer-token authentication: JWT (HS256 shared secret and/or RS256 via a JWKS file).

The tenant of every request comes from the verified token (``tenant`` claim by default),
never from a request field. Verified tokens are cached by their raw text until they
expire, so the interceptor pays for signature checks once per token, not once per call.

Tokens have bounded power: ``iat`` is required and ``exp - iat`` may not exceed
``AGENTMESH_AUTH_MAX_TOKEN_LIFETIME_S``; an HS256 secret has at least 32 bytes (checked
with the settings); a JWKS file may hold public keys only (a service that could sign
could mint any tenant's token) and is read again when it changes, so keys rotate
without a restart.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt
import structlog

from agentmesh.core.errors import Unauthenticated
from agentmesh.core.settings import ConfigError, Settings, env_var

_BEARER_PREFIX_LEN: Final = len("bearer ")
_JWKS_RECHECK_S: Final = 5.0
"""How often (at most) a token verification looks whether the JWKS file changed."""
TENANT_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
"""A tenant as a token may name it: 1-128 letters, digits and ``._@-``, starting with a
letter or digit (slugs, UUIDs, e-mail-like ids). Tenants key rows, cache entries
(``...:{tenant}:...``) and logs, so nothing else (separators, control characters,
unbounded length) reaches them."""
_PRIVATE_JWK_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "k"})
"""JWK members that carry private or symmetric key material (RFC 7518 section 6)."""


def load_jwks(path: Path) -> jwt.PyJWKSet:
    """The public keys of the JWKS file at ``path``; raises ValueError when it cannot be
    read or parsed, or when a key carries private or symmetric material."""
    text = path.read_text()
    document = json.loads(text)
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise ValueError("not a JWKS: no 'keys' list")
    for i, key in enumerate(keys):
        private = sorted(_PRIVATE_JWK_MEMBERS & set(key)) if isinstance(key, dict) else []
        if private:
            raise ValueError(
                f"key {i} ({key.get('kid', 'no kid')!r}) carries private key material"
                f" ({', '.join(private)}): give the services public keys only"
            )
    return jwt.PyJWKSet.from_json(text)


class _JwksFile:
    """A JWKS file, read again when its modification time or size changes (checked at
    most every few seconds); a change that does not load keeps the keys it had."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp = self._stat()
        self.keys = load_jwks(path)
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int]:
        info = os.stat(self._path)
        return info.st_mtime_ns, info.st_size

    def refresh(self) -> bool:
        """Reads the file again if it changed; returns whether the keys changed."""
        now = time.monotonic()
        if now - self._checked < _JWKS_RECHECK_S:
            return False
        self._checked = now
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return False
            self.keys = load_jwks(self._path)
            self._stamp = stamp
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            structlog.get_logger("agentmesh.auth").warning(
                "jwks not reloaded: keeping the keys loaded before",
                path=str(self._path),
                error=repr(exc),
            )
            return False
        structlog.get_logger("agentmesh.auth").info("jwks reloaded", path=str(self._path))
        return True


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as established by a verified token."""

    tenant: str
    subject: str


class Authenticator:
    """Verifies ``authorization: Bearer <jwt>`` values and returns the :class:`Principal`.

    Checks the signature (HS256 with the shared secret, RS256 with the JWKS key named by
    the token's ``kid``), ``exp``, ``iat`` (required, not in the future, at most
    ``max_lifetime_s`` before ``exp``), ``iss``, ``aud`` and a non-empty string tenant
    claim. A JWKS file is read again when it changes (see ``_JwksFile``).
    """

    def __init__(
        self,
        *,
        hs256_secret: str | None = None,
        jwks: jwt.PyJWKSet | Path | None = None,
        issuer: str = "agentmesh",
        audience: str = "agentmesh",
        tenant_claim: str = "tenant",
        leeway_s: float = 5.0,
        cache_size: int = 4096,
        max_lifetime_s: float = 86_400,
    ) -> None:
        if not hs256_secret and jwks is None:
            raise ValueError("an Authenticator needs an HS256 secret and/or a JWKS")
        self._secret = hs256_secret
        self._jwks_file = _JwksFile(jwks) if isinstance(jwks, Path) else None
        self._jwks: jwt.PyJWKSet | None = None
        if self._jwks_file is not None:
            self._jwks = self._jwks_file.keys
        elif isinstance(jwks, jwt.PyJWKSet):
            self._jwks = jwks
        self._max_lifetime_s = max_lifetime_s
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
        try:
            return cls(
                hs256_secret=settings.auth_hs256_secret,
                jwks=Path(settings.auth_jwks_file) if settings.auth_jwks_file else None,
                issuer=settings.auth_issuer,
                audience=settings.auth_audience,
                tenant_claim=settings.auth_tenant_claim,
                max_lifetime_s=settings.auth_max_token_lifetime_s,
            )
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            raise ConfigError(
                f"{env_var('auth_jwks_file')}={settings.auth_jwks_file!r}: cannot load JWKS: {exc}"
            ) from exc

    def authenticate(self, authorization: str | None) -> Principal:
        """Verify an ``authorization`` header value; raise :class:`Unauthenticated` if bad."""
        if not authorization:
            raise Unauthenticated("missing bearer token", reason="MISSING_TOKEN")
        if authorization[:_BEARER_PREFIX_LEN].lower() != "bearer ":
            raise Unauthenticated(
                "authorization must be 'Bearer <token>'", reason="MALFORMED_AUTHORIZATION"
            )
        token = authorization[_BEARER_PREFIX_LEN:].strip()
        if self._jwks_file is not None and self._jwks_file.refresh():
            # Rotated keys: tokens verified with a key that is gone must not stay valid.
            self._jwks = self._jwks_file.keys
            self._cache.clear()
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
                options={"require": ["exp", "iat", "iss", "aud"]},
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
        issued, expires = claims["iat"], claims["exp"]
        if not isinstance(issued, int | float) or isinstance(issued, bool):
            raise Unauthenticated("bearer token 'iat' is not a time", reason="INVALID_TOKEN")
        if expires - issued > self._max_lifetime_s:
            raise Unauthenticated(
                f"bearer token lives {int(expires - issued)} s, longer than the"
                f" {int(self._max_lifetime_s)} s this service accepts: mint shorter-lived tokens",
                reason="TOKEN_LIFETIME_TOO_LONG",
            )
        tenant = claims.get(self._tenant_claim)
        if not isinstance(tenant, str) or not tenant:
            raise Unauthenticated(
                f"bearer token has no {self._tenant_claim!r} claim", reason="MISSING_TENANT"
            )
        if not TENANT_PATTERN.fullmatch(tenant):
            raise Unauthenticated(
                f"bearer token's {self._tenant_claim!r} claim is not a tenant id: 1-128"
                " letters, digits and ._@- starting with a letter or digit",
                reason="INVALID_TENANT",
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
