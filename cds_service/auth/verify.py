"""Verification of the calling CDS client's JWT (CDS Hooks 2.0 "Trusting CDS Clients"), step by step.

The order of the checks is in the package docstring (:mod:`cds_service.auth`).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeGuard
from urllib.parse import urlsplit

import jwt
import requests
from flask import g, has_request_context
from jwt.exceptions import InvalidJTIError
from jwt.types import Options

from cds_service.auth.clients import TrustedClient, load_trusted_clients
from cds_service.auth.jwks import JwksCache
from cds_service.auth.keys import ALLOWED_ALGORITHMS, loggable
from cds_service.config import AuthMode, Settings
from cds_service.errors import Unauthorized
from cds_service.net.urls import is_loopback
from cds_service.store.base import ReplayGuard
from cds_service.store.memory import REPLAY_CACHE_CAPACITY, ReplayCache

log = logging.getLogger("cds_service.auth")

MAX_TOKEN_CHARS = 8192
MAX_CLAIM_CHARS = 256
_COMPACT_JWS = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")

# PyJWT checks the signature, that aud/exp/iat/jti are present, aud against the endpoint, iss and jti's type.
# The time claims are checked in _check_policy against the injectable clock: PyJWT reads the wall clock itself.
_PYJWT_CHECKS: Options = {
    "verify_signature": True,
    "verify_aud": True,
    "verify_iss": True,
    "verify_jti": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_sub": False,  # CDS Hooks defines no sub
    "require": ["aud", "exp", "iat", "jti"],
    "strict_aud": False,
    "enforce_minimum_key_length": True,
}
#: The reasons logged when a claim PyJWT checks is absent (or null); the same as before PyJWT checked them.
_MISSING = {
    "aud": "aud claim missing or not a string/array of strings",
    "exp": "exp claim missing or not a number",
    "iat": "iat claim missing or not a number",
    "jti": "jti claim missing or not a short string",
}


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class Authenticator:
    """Verifies the CDS client's JWT on every request (one instance per worker process)."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        session: requests.Session | None = None,
        replay_capacity: int = REPLAY_CACHE_CAPACITY,
        replay: ReplayGuard | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.replay: ReplayGuard = replay if replay is not None else ReplayCache(
            replay_capacity, max_per_issuer=min(replay_capacity, settings.replay_max_per_issuer))
        off = settings.auth == AuthMode.OFF
        self.clients: dict[str, TrustedClient] = {} if off else load_trusted_clients(settings.trusted_clients)
        self.jwks = JwksCache(settings, self.clients, session)
        if off:
            return
        base = urlsplit(settings.public_base_url)
        if not settings.is_development and base.scheme != "https" and not is_loopback(base.hostname):
            log.warning("NMS_CDS_PUBLIC_BASE_URL is not https; CDS Hooks requires TLS in production",
                        extra={"event": "config-warning"})
        log.info(f"JWT authentication on; {len(self.clients)} trusted client(s)",
                 extra={"event": "auth-config", "iss": sorted(self.clients)})

    # -- public ------------------------------------------------------------------------------------------
    def verify(self, authorization: str | None, audience: str, *, claim: bool = True) -> dict[str, object] | None:
        """Return the verified claims (None when auth is off); raise Unauthorized otherwise. ``claim=False``
        (the front's header-only pass before it reads a body) leaves the ``jti`` to the real request."""
        if self.settings.auth == AuthMode.OFF:
            return None
        token = self._bearer(authorization)
        try:
            header = jwt.get_unverified_header(token)
            unverified: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Unauthorized("malformed token") from None
        except (ValueError, TypeError, RecursionError):  # pragma: no cover - PyJWT wraps these
            raise Unauthorized("malformed token") from None
        _note_for_log(unverified)

        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            raise Unauthorized(f"algorithm not allowed: {loggable(alg).strip(chr(39))}")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            raise Unauthorized("typ header is not JWT")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("kid header missing")
        iss = unverified.get("iss")
        if not isinstance(iss, str) or not iss:
            raise Unauthorized("iss claim missing")
        client = self.clients.get(iss)
        if client is None:
            raise Unauthorized("issuer not trusted")
        jku = header.get("jku")
        if jku is not None and (not isinstance(jku, str) or jku not in client.jku):  # never fetched
            raise Unauthorized("jku header not listed for this client" if client.jku
                               else "jku header sent, but this client lists no jku")

        now = self.clock()
        key = self.jwks.find(client, kid, now)
        if key is None:
            raise Unauthorized(f"unknown kid {loggable(kid)}")
        verifier = key.by_alg.get(alg)
        if verifier is None:
            raise Unauthorized(f"alg {alg} does not suit key {loggable(kid)}")
        try:
            claims: dict[str, Any] = jwt.decode(token, key=verifier, algorithms=[verifier.algorithm_name],
                                                options=_PYJWT_CHECKS, audience=audience, issuer=client.iss)
        except jwt.PyJWTError as exc:
            raise Unauthorized(_reason(exc)) from None
        self._check_policy(claims, client, now)
        jti: str = claims["jti"]
        if not claim:
            return claims
        # StoreUnavailable (503) when the shared cache cannot be reached: fail closed, never skip the check.
        refused = self.replay.claim(iss, jti, float(claims["exp"]) + self.settings.jwt_leeway_seconds, now)
        if refused == "replay":
            raise Unauthorized("jti replayed")
        if refused == "full":
            raise Unauthorized("replay cache full for this issuer; its new tokens are refused until entries expire")
        log.debug("client authenticated", extra={"event": "auth-ok", "iss": iss, "jti": jti,
                                                 "tenant": claims.get("tenant")})
        return claims

    # -- steps -------------------------------------------------------------------------------------------
    @staticmethod
    def _bearer(authorization: str | None) -> str:
        if not authorization or not authorization.strip():
            raise Unauthorized("missing Authorization header")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthorized("Authorization scheme is not Bearer")
        token = token.strip()
        if not token:
            raise Unauthorized("empty bearer token")
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthorized("bearer token too long")
        if not _COMPACT_JWS.fullmatch(token):
            raise Unauthorized("malformed token")
        return token

    def _check_policy(self, claims: dict[str, Any], client: TrustedClient, now: float) -> None:
        """The checks that are the project's own: times on the service clock, lifetime, ``jti`` length, tenant."""
        leeway = self.settings.jwt_leeway_seconds
        exp, iat = claims["exp"], claims["iat"]  # present (PyJWT); numbers only, where PyJWT would take "17…"
        if not _is_number(exp):
            raise Unauthorized(_MISSING["exp"])
        if not _is_number(iat):
            raise Unauthorized(_MISSING["iat"])
        jti: str = claims["jti"]  # a string (PyJWT); short, as it is a key of the replay store
        if not jti or len(jti) > MAX_CLAIM_CHARS:
            raise Unauthorized(_MISSING["jti"])
        if exp <= now - leeway:
            raise Unauthorized("token expired")
        if iat > now + leeway:
            raise Unauthorized("token issued in the future (iat)")
        if "nbf" in claims:
            nbf = claims["nbf"]
            if not _is_number(nbf):
                raise Unauthorized("nbf claim not a number")
            if nbf > now + leeway:
                raise Unauthorized("token not yet valid (nbf)")
        if exp < iat:
            raise Unauthorized("exp before iat")
        if exp - iat > self.settings.jwt_max_lifetime_seconds:
            raise Unauthorized(f"token lifetime above {self.settings.jwt_max_lifetime_seconds} s")
        if client.tenant is not None and claims.get("tenant") != client.tenant:
            raise Unauthorized("tenant does not match the trusted client's")

    def join_refreshes(self, timeout: float = 10.0) -> None:
        """Wait for background JWKS refreshes (tests, orderly shutdown)."""
        self.jwks.join(timeout)


def _reason(exc: jwt.PyJWTError) -> str:
    """The reason logged for a PyJWT refusal, in the wording the service logged before PyJWT made the check."""
    if isinstance(exc, jwt.InvalidSignatureError):
        return "bad signature"
    if isinstance(exc, jwt.InvalidKeyError):
        return "key rejected"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return _MISSING.get(exc.claim, "malformed token")
    if isinstance(exc, jwt.InvalidAudienceError):  # a format error or no match; only the message tells which
        return _MISSING["aud"] if "format" in str(exc) else "aud does not match this endpoint"
    if isinstance(exc, InvalidJTIError):
        return _MISSING["jti"]
    if isinstance(exc, jwt.InvalidIssuerError):  # pragma: no cover - the same payload was read unverified
        return "iss changed"
    return "malformed token"


def _note_for_log(claims: Mapping[str, Any]) -> None:
    """Expose the (not yet verified) ``iss``/``jti`` to the request's log lines; they are safe to log."""
    if not has_request_context():
        return
    iss, jti = claims.get("iss"), claims.get("jti")
    if isinstance(iss, str):
        g.iss = iss[:MAX_CLAIM_CHARS]
    if isinstance(jti, str):
        g.jti = jti[:MAX_CLAIM_CHARS]
