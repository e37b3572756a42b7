"""Signing helpers for tests: keys, JWK Sets, CDS-client JWTs, forged tokens and trusted-clients files.

Keys are generated here (EC P-384/P-256, RSA 2048) or taken from the CDS Hooks specification's published
example private JWK (``kid`` ``example-kid``). Nothing here is a real credential.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.conftest import dataset_json

SPEC_PRIVATE_JWK_FILE = "cds-hooks-spec-examples/cds-hooks--index--block27-fragment.json"
SPEC_PUBLIC_JWKS_FILE = "cds-hooks-spec-examples/cds-hooks--index--block26-fragment.json"
SANDBOX_JWKS_FILE = "sandbox-requests/sandbox-jwks.json"
SANDBOX_ISS = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private: Any  # a cryptography private key

    def public_jwk(self, **extra: Any) -> dict[str, Any]:
        public = self.private.public_key()
        algorithm = ECAlgorithm if self.alg.startswith("ES") else RSAAlgorithm
        jwk: dict[str, Any] = algorithm.to_jwk(public, as_dict=True)
        jwk.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        jwk.update(extra)
        return jwk

    def public_pem(self) -> bytes:
        pem: bytes = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return pem


@cache
def ec_key(kid: str = "ec-384", curve: str = "P-384") -> SigningKey:
    crv = {"P-384": ec.SECP384R1(), "P-256": ec.SECP256R1()}[curve]
    return SigningKey(kid, "ES384" if curve == "P-384" else "ES256", ec.generate_private_key(crv))


@cache
def rsa_key(kid: str = "rsa-2048", alg: str = "RS384", bits: int = 2048) -> SigningKey:
    return SigningKey(kid, alg, rsa.generate_private_key(public_exponent=65537, key_size=bits))


@cache
def spec_key() -> SigningKey:
    """The CDS Hooks specification's example private key (EC P-384, kid ``example-kid``)."""
    jwk = dataset_json(SPEC_PRIVATE_JWK_FILE)
    return SigningKey(jwk["kid"], "ES384", jwt.PyJWK(jwk, algorithm="ES384").key)


def jwks(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [key.public_jwk() for key in keys]}


def make_token(
    key: SigningKey,
    *,
    iss: str,
    aud: str | list[str],
    now: float,
    lifetime: int = 300,
    jti: str | None = None,
    alg: str | None = None,
    headers: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    **claims: Any,
) -> str:
    """A CDS-client JWT as the spec describes it (``typ`` JWT, ``kid``), signed with ``key``."""
    payload: dict[str, Any] = {"iss": iss, "aud": aud, "iat": int(now), "exp": int(now) + lifetime,
                               "jti": jti or str(uuid.uuid4())}
    payload.update(claims)
    for name in drop:
        payload.pop(name, None)
    header: dict[str, Any] = {"typ": "JWT", "kid": key.kid}
    header.update(headers or {})
    return jwt.encode(payload, key.private, algorithm=alg or key.alg, headers=header)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _segments(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())


def unsigned_token(payload: dict[str, Any], *, kid: str) -> str:
    """``alg: none`` (PyJWT refuses to produce a useful one, so it is assembled by hand)."""
    return _segments({"alg": "none", "typ": "JWT", "kid": kid}, payload) + "."


def hs256_with_public_key(payload: dict[str, Any], key: SigningKey) -> str:
    """The algorithm-confusion attack: HS256 keyed with the client's public key (PEM) as the secret."""
    signing_input = _segments({"alg": "HS256", "typ": "JWT", "kid": key.kid}, payload)
    signature = hmac.new(key.public_pem(), signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + _b64(signature)


def claims_for(*, iss: str, aud: str, now: float, lifetime: int = 300) -> dict[str, Any]:
    return {"iss": iss, "aud": aud, "iat": int(now), "exp": int(now) + lifetime, "jti": str(uuid.uuid4())}


def tamper(token: str) -> str:
    """Same header and signature over a changed payload (new ``jti``): the signature no longer matches."""
    head, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["jti"] = str(uuid.uuid4())
    return f"{head}.{_b64(json.dumps(claims).encode())}.{signature}"


def write_trusted_clients(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps(entries, indent=2), encoding="utf-8")
    return path


def sandbox_entry() -> dict[str, Any]:
    """The trusted-clients entry for the reference sandbox (docs/security.md 3.1): its public key from the
    repository, and the ``jku`` its tokens carry, accepted as a label and never fetched."""
    return {"iss": SANDBOX_ISS, "jwks": dataset_json(SANDBOX_JWKS_FILE), "jku": [SANDBOX_JKU]}
