"""Public keys of the trusted CDS clients: one JWK → a :class:`VerificationKey` bound to the algorithms it may verify.

The house rules on keys live here: asymmetric algorithms only (:data:`ALLOWED_ALGORITHMS`), a ``kid`` on every
key, no private or symmetric material, RSA of at least :data:`MIN_RSA_BITS` bits. PyJWT builds the key objects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

#: Asymmetric JWS algorithms accepted (CDS Hooks: ES384 and RS384 recommended). Never ``none`` or HS*.
ALLOWED_ALGORITHMS: tuple[str, ...] = ("ES384", "RS384", "ES256", "RS256")
_EC_CURVE_ALG = {"P-384": "ES384", "P-256": "ES256"}
_RSA_ALGS = ("RS384", "RS256")
#: JWK members that carry private or symmetric key material: refused in the trusted clients file.
_SECRET_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
MIN_RSA_BITS = 2048

_LOGGABLE = re.compile(r"^[A-Za-z0-9._:+/=@-]{1,64}$")


def loggable(value: Any) -> str:
    """A header or JWK value for a log reason: shown only when it is a short token of plain characters."""
    return repr(value) if isinstance(value, str) and _LOGGABLE.fullmatch(value) else "(not shown)"


@dataclass(frozen=True)
class VerificationKey:
    """One public key of a client, bound to each algorithm it may verify (EC: one; RSA: RS384/RS256)."""

    kid: str
    by_alg: Mapping[str, jwt.PyJWK]


def parse_jwk(jwk: Any) -> VerificationKey:
    """Build a verification key from one public JWK; ``ValueError`` with a message safe to log otherwise.

    Messages never contain key material (PyJWT's own messages can, so they are not passed on).
    """
    if not isinstance(jwk, dict):
        raise ValueError("is not a JSON object")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid.strip():
        raise ValueError("has no 'kid' (CDS Hooks requires one per key)")
    secret = [name for name in _SECRET_MEMBERS if name in jwk]
    if secret:
        raise ValueError(
            f"contains private or symmetric key material ({', '.join(secret)}); list public keys only"
        )
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise ValueError("has 'use' other than 'sig'")
    kty = jwk.get("kty")
    algs: tuple[str, ...]
    if kty == "EC":
        crv = jwk.get("crv")
        alg = _EC_CURVE_ALG.get(crv) if isinstance(crv, str) else None
        if alg is None:
            raise ValueError("is an EC key on an unsupported curve (use P-384 or P-256)")
        algs = (alg,)
    elif kty == "RSA":
        algs = _RSA_ALGS
    elif kty == "oct":
        raise ValueError("is a symmetric ('oct') key; only EC and RSA public keys are accepted")
    else:
        raise ValueError(f"has unsupported key type {loggable(kty)}; use EC (P-384/P-256) or RSA")
    declared = jwk.get("alg")
    if declared is not None:
        if not isinstance(declared, str) or declared not in algs:
            allowed = ", ".join(algs)
            raise ValueError(f"declares alg {loggable(declared)}, not allowed for this key (allowed: {allowed})")
        algs = (declared,)
    by_alg: dict[str, jwt.PyJWK] = {}
    for alg in algs:
        try:
            key = jwt.PyJWK(jwk, algorithm=alg)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise ValueError(f"is not a valid {kty} public key") from None
        if isinstance(key.key, rsa.RSAPublicKey) and key.key.key_size < MIN_RSA_BITS:
            raise ValueError(f"is an RSA key shorter than {MIN_RSA_BITS} bits")
        by_alg[alg] = key
    return VerificationKey(kid, by_alg)


def parse_jwks(jwks: Any) -> tuple[dict[str, VerificationKey], list[str]]:
    """Parse a JWK Set object; returns the usable keys by kid and a safe message per rejected key."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError("is not a JWK Set (an object with a 'keys' array)")
    keys: dict[str, VerificationKey] = {}
    problems: list[str] = []
    for i, jwk in enumerate(jwks["keys"]):
        try:
            key = parse_jwk(jwk)
        except ValueError as exc:
            problems.append(f"key #{i + 1} {exc}")
            continue
        if key.kid in keys:
            problems.append(f"key #{i + 1} repeats kid {loggable(key.kid)} (kids must be unique)")
            continue
        keys[key.kid] = key
    return keys, problems
