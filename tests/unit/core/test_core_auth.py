"""Bearer-token verification: HS256, RS256 via JWKS, and every way a token is refused."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from agentmesh.core.auth import Authenticator, Principal, mint_token
from agentmesh.core.errors import Unauthenticated
from agentmesh.core.settings import ConfigError, Settings

pytestmark = pytest.mark.unit

SECRET = "unit-test-secret-with-at-least-32-bytes"


def bearer(token: str) -> str:
    return f"Bearer {token}"


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": "agentmesh",
        "aud": "agentmesh",
        "sub": "alice",
        "tenant": "acme",
        "iat": now,
        "exp": now + 600,
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


@pytest.fixture
def hs256() -> Authenticator:
    settings = Settings.from_env({"AGENTMESH_AUTH_HS256_SECRET": SECRET}, service="memory")
    return Authenticator.from_settings(settings)


@pytest.fixture
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def rs256(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Authenticator:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = []
    for kid, key in (("other", other), ("k1", rsa_key)):
        jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
        keys.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": keys}))
    settings = Settings.from_env({"AGENTMESH_AUTH_JWKS_FILE": str(jwks_file)}, service="memory")
    return Authenticator.from_settings(settings)


def refusal(authenticator: Authenticator, authorization: str | None) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as raised:
        authenticator.authenticate(authorization)
    return raised.value


def test_minted_hs256_token_gives_tenant_and_subject(hs256: Authenticator) -> None:
    token = mint_token(SECRET, "acme", "alice")

    assert hs256.authenticate(bearer(token)) == Principal(tenant="acme", subject="alice")
    assert hs256.authenticate("bearer " + token).tenant == "acme"  # scheme is case-insensitive


def test_rs256_token_is_verified_with_the_jwks_key_named_by_kid(
    rs256: Authenticator, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = jwt.encode(claims(tenant="globex"), rsa_key, algorithm="RS256", headers={"kid": "k1"})

    assert rs256.authenticate(bearer(token)) == Principal(tenant="globex", subject="alice")


def test_rs256_token_signed_by_a_key_outside_the_jwks_is_refused(rs256: Authenticator) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims(), stranger, algorithm="RS256", headers={"kid": "k1"})
    unknown_kid = jwt.encode(claims(), stranger, algorithm="RS256", headers={"kid": "k9"})

    assert refusal(rs256, bearer(forged)).reason == "BAD_SIGNATURE"
    assert refusal(rs256, bearer(unknown_kid)).reason == "UNKNOWN_KEY"


def test_hs256_token_with_another_secret_is_refused(hs256: Authenticator) -> None:
    token = mint_token("another-secret-that-is-also-32-bytes-long", "acme")

    error = refusal(hs256, bearer(token))

    assert error.reason == "BAD_SIGNATURE"
    assert error.message == "bearer token signature is invalid"


def test_expired_token_is_refused(hs256: Authenticator) -> None:
    token = jwt.encode(claims(exp=int(time.time()) - 60), SECRET, algorithm="HS256")

    assert refusal(hs256, bearer(token)).reason == "TOKEN_EXPIRED"


def test_wrong_audience_is_refused(hs256: Authenticator) -> None:
    token = jwt.encode(claims(aud="someone-else"), SECRET, algorithm="HS256")

    error = refusal(hs256, bearer(token))

    assert error.reason == "WRONG_AUDIENCE"
    assert "'agentmesh'" in error.message


def test_wrong_issuer_is_refused(hs256: Authenticator) -> None:
    token = jwt.encode(claims(iss="mallory"), SECRET, algorithm="HS256")

    assert refusal(hs256, bearer(token)).reason == "WRONG_ISSUER"


@pytest.mark.parametrize("tenant", [None, "", 42])
def test_token_without_a_string_tenant_is_refused(hs256: Authenticator, tenant: object) -> None:
    token = jwt.encode(claims(tenant=tenant), SECRET, algorithm="HS256")

    error = refusal(hs256, bearer(token))

    assert error.reason == "MISSING_TENANT"
    assert error.message == "bearer token has no 'tenant' claim"


@pytest.mark.parametrize(
    "tenant",
    [
        "a:b",  # a cache-key separator
        "a/b",
        "x" * 129,  # too long
        "a\x00b",  # NUL: a database error, not an identity
        "\ud800",  # a lone surrogate, from a JSON escape in the token
        " acme",
        "-acme",
        "acme\n",  # the whole claim must match
        "ünïcode",
    ],
)
def test_token_with_a_malformed_tenant_is_refused(hs256: Authenticator, tenant: str) -> None:
    token = jwt.encode(claims(tenant=tenant), SECRET, algorithm="HS256")

    assert refusal(hs256, bearer(token)).reason == "INVALID_TENANT"


@pytest.mark.parametrize(
    "tenant",
    ["acme", "tenant-a", "a" * 128, "ops@example.com", "3f2c9a1e-0b7d-4c55-9d2e-1a2b3c4d5e6f"],
)
def test_tenant_ids_of_usual_shapes_are_accepted(hs256: Authenticator, tenant: str) -> None:
    token = jwt.encode(claims(tenant=tenant), SECRET, algorithm="HS256")

    assert hs256.authenticate(bearer(token)).tenant == tenant


def test_token_without_exp_is_refused(hs256: Authenticator) -> None:
    token = jwt.encode(claims(exp=None), SECRET, algorithm="HS256")

    assert refusal(hs256, bearer(token)).reason == "MISSING_CLAIM"


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (None, "MISSING_TOKEN"),
        ("", "MISSING_TOKEN"),
        ("Basic dXNlcjpwYXNz", "MALFORMED_AUTHORIZATION"),
        ("Bearer not-a-jwt", "MALFORMED_TOKEN"),
    ],
)
def test_missing_or_malformed_credentials_are_refused(
    hs256: Authenticator, authorization: str | None, reason: str
) -> None:
    assert refusal(hs256, authorization).reason == reason


def test_unsigned_and_unconfigured_algorithms_are_refused(
    hs256: Authenticator, rsa_key: rsa.RSAPrivateKey
) -> None:
    unsigned = jwt.encode(claims(), "", algorithm="none")
    rs256_without_jwks = jwt.encode(claims(), rsa_key, algorithm="RS256")

    assert refusal(hs256, bearer(unsigned)).reason == "UNSUPPORTED_ALGORITHM"
    assert refusal(hs256, bearer(rs256_without_jwks)).reason == "UNSUPPORTED_ALGORITHM"


def test_verified_tokens_are_cached_until_they_expire(
    hs256: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    decodes = 0
    real_decode = jwt.decode

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        nonlocal decodes
        decodes += 1
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    token = bearer(mint_token(SECRET, "acme", ttl_s=600))

    hs256.authenticate(token)
    hs256.authenticate(token)
    assert decodes == 1

    # Once the clock passes the token's exp the cache entry is dropped and the token
    # verified again (PyJWT reads its own clock, so here it still verifies).
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 601)
    hs256.authenticate(token)
    assert decodes == 2


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    authenticator = Authenticator(hs256_secret=SECRET, cache_size=2)
    tokens = [bearer(mint_token(SECRET, f"t{i}")) for i in range(3)]

    for token in tokens:
        authenticator.authenticate(token)

    decodes = 0
    real_decode = jwt.decode

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        nonlocal decodes
        decodes += 1
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    authenticator.authenticate(tokens[2])  # most recent: still cached
    authenticator.authenticate(tokens[0])  # oldest: evicted, verified again
    assert decodes == 1


def test_unreadable_jwks_file_is_a_config_error(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"AGENTMESH_AUTH_JWKS_FILE": str(tmp_path / "missing.json")}, service="agent"
    )

    with pytest.raises(ConfigError, match="AGENTMESH_AUTH_JWKS_FILE"):
        Authenticator.from_settings(settings)


# ------------------------------------------------------------------ bounded power


def hs256_token(**overrides: Any) -> str:
    return bearer(jwt.encode(claims(**overrides), SECRET, algorithm="HS256"))


def test_a_token_without_iat_is_refused(hs256: Authenticator) -> None:
    assert refusal(hs256, hs256_token(iat=None)).reason == "MISSING_CLAIM"


@pytest.mark.parametrize("lifetime_s", [86_400 + 1, 7 * 86_400, 365 * 86_400])
def test_a_token_living_longer_than_the_limit_is_refused(
    hs256: Authenticator, lifetime_s: int
) -> None:
    now = int(time.time())
    token = hs256_token(iat=now, exp=now + lifetime_s)
    error = refusal(hs256, token)
    assert error.reason == "TOKEN_LIFETIME_TOO_LONG"
    assert "86400" in error.message


def test_the_lifetime_limit_is_a_setting() -> None:
    settings = Settings.from_env(
        {"AGENTMESH_AUTH_HS256_SECRET": SECRET, "AGENTMESH_AUTH_MAX_TOKEN_LIFETIME_S": "600"},
        service="memory",
    )
    short = Authenticator.from_settings(settings)
    now = int(time.time())
    assert short.authenticate(hs256_token(iat=now, exp=now + 600)).tenant == "acme"
    assert refusal(short, hs256_token(iat=now, exp=now + 601)).reason == "TOKEN_LIFETIME_TOO_LONG"


@pytest.mark.parametrize("iat", ["yesterday", True, None])
def test_a_token_whose_iat_is_not_a_time_is_refused(hs256: Authenticator, iat: object) -> None:
    token = hs256_token(iat=iat) if iat is not None else hs256_token(iat=int(time.time()) + 3600)
    assert refusal(hs256, token).reason in {"INVALID_TOKEN", "MISSING_CLAIM"}


def _jwks_with(rsa_key: rsa.RSAPrivateKey, *, private: bool, kid: str = "k1") -> dict[str, Any]:
    key = rsa_key if private else rsa_key.public_key()
    return {"keys": [{**json.loads(RSAAlgorithm.to_jwk(key)), "kid": kid, "alg": "RS256"}]}


def test_a_jwks_with_private_key_material_is_a_config_error(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    jwks_file = tmp_path / "jwks.json"
    for document in (
        _jwks_with(rsa_key, private=True),
        {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "sym"}]},
    ):
        jwks_file.write_text(json.dumps(document))
        settings = Settings.from_env({"AGENTMESH_AUTH_JWKS_FILE": str(jwks_file)}, service="agent")
        with pytest.raises(ConfigError, match="private key material"):
            Authenticator.from_settings(settings)


def test_a_changed_jwks_file_is_read_again_without_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    second = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(_jwks_with(first, private=False, kid="k1")))
    authenticator = Authenticator(jwks=jwks_file)
    clock = [time.monotonic()]
    monkeypatch.setattr("agentmesh.core.auth.time.monotonic", lambda: clock[0])

    def rs256_token(key: rsa.RSAPrivateKey, kid: str) -> str:
        return bearer(jwt.encode(claims(), key, algorithm="RS256", headers={"kid": kid}))

    assert authenticator.authenticate(rs256_token(first, "k1")).tenant == "acme"
    assert refusal(authenticator, rs256_token(second, "k2")).reason == "UNKNOWN_KEY"

    # The operator rotates: k2 replaces k1 in the file.
    jwks_file.write_text(json.dumps(_jwks_with(second, private=False, kid="k2")) + " ")
    clock[0] += 10
    assert authenticator.authenticate(rs256_token(second, "k2")).tenant == "acme"
    assert refusal(authenticator, rs256_token(first, "k1")).reason == "UNKNOWN_KEY"

    # A broken file keeps the keys loaded before.
    jwks_file.write_text("{not json")
    clock[0] += 10
    assert authenticator.authenticate(rs256_token(second, "k2")).tenant == "acme"


def test_a_jwks_configmap_update_is_read_again_without_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The layout the kubelet gives a ConfigMap volume (prod mounts the JWKS this way):
    `jwks.json -> ..data/jwks.json`, `..data -> ..<version>/`; an update writes a new
    version directory and swaps `..data` with one rename. The path never changes."""
    first = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    second = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    mount = tmp_path / "jwks"
    mount.mkdir()

    def publish(version: str, *keys: tuple[rsa.RSAPrivateKey, str]) -> None:
        (mount / version).mkdir()
        document = {"keys": [_jwks_with(k, private=False, kid=kid)["keys"][0] for k, kid in keys]}
        (mount / version / "jwks.json").write_text(json.dumps(document))
        (mount / "..data_tmp").symlink_to(version)
        (mount / "..data_tmp").rename(mount / "..data")  # atomic, as the kubelet does

    publish("..v1", (first, "k1"))
    (mount / "jwks.json").symlink_to("..data/jwks.json")
    authenticator = Authenticator(jwks=mount / "jwks.json")
    clock = [time.monotonic()]
    monkeypatch.setattr("agentmesh.core.auth.time.monotonic", lambda: clock[0])

    def rs256_token(key: rsa.RSAPrivateKey, kid: str) -> str:
        return bearer(jwt.encode(claims(), key, algorithm="RS256", headers={"kid": kid}))

    assert refusal(authenticator, rs256_token(second, "k2")).reason == "UNKNOWN_KEY"
    # Rotation, step 1: the new key beside the old one.
    publish("..v2", (first, "k1"), (second, "k2"))
    clock[0] += 10
    assert authenticator.authenticate(rs256_token(second, "k2")).tenant == "acme"
    assert authenticator.authenticate(rs256_token(first, "k1")).tenant == "acme"
    # Step 3: the old key removed.
    publish("..v3", (second, "k2"))
    clock[0] += 10
    assert refusal(authenticator, rs256_token(first, "k1")).reason == "UNKNOWN_KEY"
    assert authenticator.authenticate(rs256_token(second, "k2")).tenant == "acme"
