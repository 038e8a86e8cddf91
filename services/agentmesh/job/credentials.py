"""The worker's credentials: it calls the Agent service as the tenant whose job it runs.

A job outlives the token of the call that created it, so the worker signs short-lived
tokens of its own (subject ``agentmesh-worker``, the job's tenant): with an RS256
private key whose public key the services trust (``AGENTMESH_WORKER_SIGNING_KEY_FILE``
and ``_ID``, production), or with the shared HS256 secret (development). A token is
reused until a minute before it expires.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Final

import jwt

from agentmesh.core.settings import ConfigError, Settings
from agentmesh.job.settings import WorkerSettings

SUBJECT: Final = "agentmesh-worker"
TOKEN_TTL_S: Final = 300
_RENEW_BEFORE_S: Final = 60


class TenantTokens:
    """Signs (and caches) a token per tenant."""

    def __init__(self, settings: Settings, worker: WorkerSettings) -> None:
        self._issuer = settings.auth_issuer
        self._audience = settings.auth_audience
        self._claim = settings.auth_tenant_claim
        self._headers: dict[str, str] = {}
        if worker.signing_key_file:
            try:
                self._key: str = Path(worker.signing_key_file).read_text()
            except OSError as exc:
                raise ConfigError(f"AGENTMESH_WORKER_SIGNING_KEY_FILE: {exc}") from exc
            self._algorithm = "RS256"
            self._headers = {"kid": worker.signing_key_id}
        elif settings.auth_hs256_secret:
            self._key = settings.auth_hs256_secret
            self._algorithm = "HS256"
        else:
            raise ConfigError(
                "the worker signs its calls to the Agent service: set"
                " AGENTMESH_WORKER_SIGNING_KEY_FILE and AGENTMESH_WORKER_SIGNING_KEY_ID"
                " (production) or AGENTMESH_AUTH_HS256_SECRET (development)"
            )
        self._cache: dict[str, tuple[str, float]] = {}

    def authorization(self, tenant: str) -> str:
        """The ``authorization`` header value for a call as ``tenant``."""
        now = time.time()
        cached = self._cache.get(tenant)
        if cached is not None and cached[1] - _RENEW_BEFORE_S > now:
            return cached[0]
        issued = int(now)
        token = jwt.encode(
            {
                "iss": self._issuer,
                "aud": self._audience,
                "sub": SUBJECT,
                self._claim: tenant,
                "iat": issued,
                "exp": issued + TOKEN_TTL_S,
            },
            self._key,
            algorithm=self._algorithm,
            headers=self._headers or None,
        )
        value = f"Bearer {token}"
        if len(self._cache) > 10_000:
            self._cache.clear()  # bounded: tenants come back for a fresh token
        self._cache[tenant] = (value, issued + TOKEN_TTL_S)
        return value
