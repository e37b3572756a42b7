"""Authentication of the calling CDS client (CDS Hooks 2.0 "Trusting CDS Clients").

``NMS_CDS_AUTH=jwt`` (default): every route (discovery, service, feedback) needs
``Authorization: Bearer <JWT>`` signed by a client listed in ``NMS_CDS_TRUSTED_CLIENTS``, a JSON file::

    [
      {"iss": "https://ehr.example.org", "jwks_url": "https://ehr.example.org/.well-known/jwks.json",
       "tenant": "optional-tenant-id"},
      {"iss": "https://sandbox.cds-hooks.org", "jwks": {"keys": [ ...public JWKs... ]},
       "jku": ["https://sandbox.cds-hooks.org/.well-known/jwks.json"]}
    ]

A token is accepted only when, in this order:

1. the header is a JWS header with an asymmetric ``alg`` from :data:`ALLOWED_ALGORITHMS` (never ``none``,
   never HS*), ``typ`` ``JWT`` when present, and a ``kid``;
2. ``iss`` is a trusted client; a ``jku`` header must be one of the client's listed values (its ``jwks_url``
   and its ``jku`` list; none listed: any ``jku`` is refused). The service never fetches a URL named by a
   token: only the allowlisted ``jwks_url``;
3. ``kid`` names a key of that client (static ``jwks``, then the cached ``jwks_url`` set, refreshed on an
   unknown ``kid`` at most once per ``NMS_CDS_JWKS_REFRESH_MIN_INTERVAL_SECONDS``; a refresh without a
   usable key keeps the cached keys, and no lock is held while fetching), the key suits ``alg``
   and the signature verifies (:func:`jwt.decode` with the key's own algorithm as the only one allowed);
4. ``aud`` (string or list) contains the exact endpoint URL built from ``NMS_CDS_PUBLIC_BASE_URL``;
   ``exp`` is not past, ``iat`` not in the future, ``nbf`` (if present) reached, all with
   ``NMS_CDS_JWT_LEEWAY_SECONDS``; ``exp - iat`` at most ``NMS_CDS_JWT_MAX_LIFETIME_SECONDS``;
   ``tenant`` equals the configured one, when configured;
5. ``(iss, jti)`` was not seen before (the replay cache keeps it until ``exp`` + leeway).

Any failure raises :class:`~cds_service.errors.Unauthorized` whose ``reason`` is for the server log only;
the HTTP answer is a bare 401. The token itself is never logged; ``iss`` and ``jti`` may be.

``NMS_CDS_AUTH=off``: development only; ``create_app`` logs a warning and ``nms-cds serve`` refuses a
non-loopback bind unless ``NMS_CDS_AUTH_OFF_FORCE=true``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import urlsplit

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import g, has_request_context
from jwt.types import Options

from cds_service.config import AuthMode, Settings
from cds_service.errors import ConfigError, Unauthorized
from cds_service.fhir.client import is_loopback, new_session, tls_failure, trust_hint
from cds_service.store.base import ReplayGuard
from cds_service.store.memory import REPLAY_CACHE_CAPACITY, ReplayCache

log = logging.getLogger("cds_service.auth")

#: Asymmetric JWS algorithms accepted (CDS Hooks: ES384 and RS384 recommended). Never ``none`` or HS*.
ALLOWED_ALGORITHMS: tuple[str, ...] = ("ES384", "RS384", "ES256", "RS256")
_EC_CURVE_ALG = {"P-384": "ES384", "P-256": "ES256"}
_RSA_ALGS = ("RS384", "RS256")
#: JWK members that carry private or symmetric key material: refused in the trusted clients file.
_SECRET_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
MIN_RSA_BITS = 2048
MAX_TOKEN_CHARS = 8192
MAX_CLAIM_CHARS = 256
JWKS_MAX_BYTES = 64 * 1024
JWKS_TIMEOUT = (2.0, 3.0)  # connect, read (seconds)
JWKS_TOTAL_SECONDS = 5.0  # a JWK Set trickled slower than this is abandoned
#: A fetched JWK Set older than this is re-fetched on next use (rate limit still applies), so removed keys stop working.
JWKS_MAX_AGE_SECONDS = 3600.0
_COMPACT_JWS = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")

# Signature only: every claim is checked below against the injectable clock.
_SIGNATURE_ONLY: Options = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "require": [],
    "enforce_minimum_key_length": True,
}


class TrustedClientsError(ConfigError):
    """The trusted clients configuration is missing or invalid (raised at start-up, never per request)."""


# -- keys ----------------------------------------------------------------------------------------------
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
        raise ValueError(f"has unsupported key type {_loggable(kty)}; use EC (P-384/P-256) or RSA")
    declared = jwk.get("alg")
    if declared is not None:
        if not isinstance(declared, str) or declared not in algs:
            allowed = ", ".join(algs)
            raise ValueError(f"declares alg {_loggable(declared)}, not allowed for this key (allowed: {allowed})")
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
            problems.append(f"key #{i + 1} repeats kid {_loggable(key.kid)} (kids must be unique)")
            continue
        keys[key.kid] = key
    return keys, problems


# -- trusted clients -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrustedClient:
    iss: str
    keys: Mapping[str, VerificationKey]
    jwks_url: str | None = None
    tenant: str | None = None
    #: ``jku`` header values a token of this client may carry: the ``jku`` list and the ``jwks_url``.
    #: Only ``jwks_url`` is ever fetched; the others are accepted as labels and never contacted.
    jku: frozenset[str] = frozenset()


def _check_jwks_url(url: Any, member: str = "jwks_url") -> str:
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"'{member}' must be a non-empty string")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise ValueError(f"'{member}' is not a valid URL") from None
    if parts.scheme not in {"https", "http"} or not host:
        raise ValueError(f"'{member}' must be an absolute https URL")
    if parts.scheme == "http" and not is_loopback(host):
        raise ValueError(f"'{member}' must use https (http only for loopback)")
    if "@" in parts.netloc or parts.fragment or "#" in url:
        raise ValueError(f"'{member}' must not carry credentials or a fragment")
    return url


def _check_jku_list(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ValueError("'jku' must be a URL or a non-empty array of URLs")
    return [_check_jwks_url(item, "jku") for item in items]


def load_trusted_clients(path: Path | None) -> dict[str, TrustedClient]:
    """Read and validate the trusted clients file; :class:`TrustedClientsError` names the problem and file."""
    if path is None:
        raise TrustedClientsError(
            "NMS_CDS_AUTH=jwt needs NMS_CDS_TRUSTED_CLIENTS, a JSON file listing the trusted CDS clients "
            "(see docs/security.md); for local development only, NMS_CDS_AUTH=off"
        )
    where = f"trusted clients file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TrustedClientsError(f"{where} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TrustedClientsError(f"{where} cannot be read ({type(exc).__name__})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        position = f"line {exc.lineno} column {exc.colno}"
        raise TrustedClientsError(f"{where} is not valid JSON ({exc.msg} at {position})") from None
    if not isinstance(data, list):
        raise TrustedClientsError(f"{where} must hold a JSON array of client objects")
    if not data:
        raise TrustedClientsError(f"{where} lists no clients; every request would be refused")
    clients: dict[str, TrustedClient] = {}
    for i, entry in enumerate(data):
        label = f"{where}, entry #{i + 1}"
        if not isinstance(entry, dict):
            raise TrustedClientsError(f"{label} is not a JSON object")
        iss = entry.get("iss")
        if not isinstance(iss, str) or not iss.strip():
            raise TrustedClientsError(f"{label} has no 'iss' string")
        label = f"{label} (iss {iss[:200]!r})"
        if iss in clients:
            raise TrustedClientsError(f"{label} repeats an issuer listed before")
        unknown = sorted(set(entry) - {"iss", "jwks", "jwks_url", "jku", "tenant", "comment"})
        if unknown:
            raise TrustedClientsError(f"{label} has unknown member(s) {', '.join(unknown)}")
        if "jwks" not in entry and "jwks_url" not in entry:
            raise TrustedClientsError(f"{label} needs 'jwks' (a JWK Set object) or 'jwks_url'")
        keys: dict[str, VerificationKey] = {}
        if "jwks" in entry:
            try:
                keys, problems = parse_jwks(entry["jwks"])
            except ValueError as exc:
                raise TrustedClientsError(f"{label}: 'jwks' {exc}") from None
            if problems:
                raise TrustedClientsError(f"{label}: 'jwks' {problems[0]}")
            if not keys:
                raise TrustedClientsError(f"{label}: 'jwks' holds no keys")
        jwks_url = None
        if "jwks_url" in entry:
            try:
                jwks_url = _check_jwks_url(entry["jwks_url"])
            except ValueError as exc:
                raise TrustedClientsError(f"{label}: {exc}") from None
        jku: set[str] = {jwks_url} if jwks_url else set()
        if "jku" in entry:
            try:
                jku.update(_check_jku_list(entry["jku"]))
            except ValueError as exc:
                raise TrustedClientsError(f"{label}: {exc}") from None
        tenant = entry.get("tenant")
        if tenant is not None and (not isinstance(tenant, str) or not tenant):
            raise TrustedClientsError(f"{label}: 'tenant' must be a non-empty string when given")
        clients[iss] = TrustedClient(iss=iss, keys=keys, jwks_url=jwks_url, tenant=tenant, jku=frozenset(jku))
    return clients


# -- replay cache ----------------------------------------------------------------------------------------
# ``(iss, jti)`` pairs are claimed in a ReplayGuard (cds_service.store): the shared store or Redis when the
# app runs (every worker and replica sees every claim), the in-process ReplayCache otherwise.


# -- remote JWK Sets -------------------------------------------------------------------------------------
#: How long a request whose key is not cached waits for a refresh another thread already runs, when the
#: client's set was never fetched (a cold start): the caller would otherwise get 401 for a key that exists.
JWKS_COLD_WAIT_SECONDS = JWKS_TOTAL_SECONDS + sum(JWKS_TIMEOUT)


@dataclass
class _RemoteKeys:
    """The cached JWK Set of one ``jwks_url``. ``lock`` guards these fields only and is never held during a
    fetch; ``refreshing`` is set while the one refresh of this client is in flight."""

    keys: dict[str, VerificationKey] = field(default_factory=dict)
    fetched_at: float | None = None
    attempted_at: float | None = None
    refreshing: threading.Event | None = None
    thread: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


_LOGGABLE = re.compile(r"^[A-Za-z0-9._:+/=@-]{1,64}$")


def _loggable(value: Any) -> str:
    """A header or JWK value for a log reason: shown only when it is a short token of plain characters."""
    return repr(value) if isinstance(value, str) and _LOGGABLE.fullmatch(value) else "(not shown)"


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
        self.clients: dict[str, TrustedClient] = {}
        self._remote: dict[str, _RemoteKeys] = {}
        self._session = session  # None: a fresh session per (rare) JWKS fetch, so no session is shared by threads
        if settings.auth == AuthMode.OFF:
            return
        self.clients = load_trusted_clients(settings.trusted_clients)
        self._remote = {c.jwks_url: _RemoteKeys() for c in self.clients.values() if c.jwks_url}
        base = urlsplit(settings.public_base_url)
        if not settings.is_development and base.scheme != "https" and not is_loopback(base.hostname):
            log.warning("NMS_CDS_PUBLIC_BASE_URL is not https; CDS Hooks requires TLS in production",
                        extra={"event": "config-warning"})
        log.info(f"JWT authentication on; {len(self.clients)} trusted client(s)",
                 extra={"event": "auth-config", "iss": sorted(self.clients)})

    # -- public ------------------------------------------------------------------------------------------
    def verify(self, authorization: str | None, audience: str) -> dict[str, object] | None:
        """Return the verified claims (None when auth is off); raise Unauthorized otherwise."""
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
            raise Unauthorized(f"algorithm not allowed: {_loggable(alg).strip(chr(39))}")
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
        key = self._find_key(client, kid, now)
        if key is None:
            raise Unauthorized(f"unknown kid {_loggable(kid)}")
        verifier = key.by_alg.get(alg)
        if verifier is None:
            raise Unauthorized(f"alg {alg} does not suit key {_loggable(kid)}")
        try:
            claims: dict[str, Any] = jwt.decode(token, key=verifier, algorithms=[verifier.algorithm_name],
                                                options=_SIGNATURE_ONLY)
        except jwt.InvalidSignatureError:
            raise Unauthorized("bad signature") from None
        except jwt.InvalidKeyError:
            raise Unauthorized("key rejected") from None
        except jwt.PyJWTError:
            raise Unauthorized("malformed token") from None
        self._check_claims(claims, client, audience, now)
        jti: str = claims["jti"]
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

    def _check_claims(self, claims: dict[str, Any], client: TrustedClient, audience: str, now: float) -> None:
        leeway = self.settings.jwt_leeway_seconds
        if claims.get("iss") != client.iss:  # pragma: no cover - the same payload was read unverified
            raise Unauthorized("iss changed")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not audiences or not all(isinstance(a, str) for a in audiences):
            raise Unauthorized("aud claim missing or not a string/array of strings")
        if audience not in audiences:
            raise Unauthorized("aud does not match this endpoint")
        exp, iat = claims.get("exp"), claims.get("iat")
        if not _is_number(exp):
            raise Unauthorized("exp claim missing or not a number")
        if not _is_number(iat):
            raise Unauthorized("iat claim missing or not a number")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > MAX_CLAIM_CHARS:
            raise Unauthorized("jti claim missing or not a short string")
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

    def _find_key(self, client: TrustedClient, kid: str, now: float) -> VerificationKey | None:
        """The client's key ``kid``: static keys first, then the cached set from ``jwks_url``.

        A cached key is returned at once, even while a refresh runs or when the set is older than
        :data:`JWKS_MAX_AGE_SECONDS` (then one background refresh is started). An unknown ``kid`` starts one
        refresh in this thread, rate limited per client; a concurrent unknown ``kid`` does not wait for it
        (except on a cold start) and so cannot hold a worker thread.
        """
        key = client.keys.get(kid)
        if key is not None or client.jwks_url is None:
            return key
        remote = self._remote[client.jwks_url]
        with remote.lock:
            key = remote.keys.get(kid)
            stale = remote.fetched_at is None or not 0 <= now - remote.fetched_at <= JWKS_MAX_AGE_SECONDS
            if key is not None and not stale:
                return key
            start = remote.refreshing is None and self._may_fetch(remote, now)
            if start:
                remote.attempted_at = now
                remote.refreshing = threading.Event()
            in_flight, cold = remote.refreshing, remote.fetched_at is None
        if key is not None:  # cached but old: answer with it, refresh off the request path
            if start:
                remote.thread = threading.Thread(target=self._refresh, args=(client, remote, now),
                                                 name="jwks-refresh", daemon=True)
                remote.thread.start()
            return key
        if start:
            self._refresh(client, remote, now)
        elif in_flight is not None and cold:
            in_flight.wait(JWKS_COLD_WAIT_SECONDS)
        with remote.lock:
            return remote.keys.get(kid)

    def _refresh(self, client: TrustedClient, remote: _RemoteKeys, now: float) -> None:
        """Fetch the set once; replace the cache only with a set that has at least one usable key."""
        assert client.jwks_url is not None
        try:
            fetched = self._fetch_jwks(client.jwks_url, client.iss)
            with remote.lock:
                if fetched:
                    remote.keys = fetched
                    remote.fetched_at = now
                    return
                kept = len(remote.keys)
            if fetched is not None:
                log.warning(f"JWK Set has no usable key; keeping the {kept} key(s) fetched before",
                            extra={"event": "jwks-fetch", "iss": client.iss})
        finally:
            with remote.lock:
                done, remote.refreshing = remote.refreshing, None
            if done is not None:
                done.set()

    def join_refreshes(self, timeout: float = 10.0) -> None:
        """Wait for background JWKS refreshes (tests, orderly shutdown)."""
        for remote in self._remote.values():
            thread = remote.thread
            if thread is not None:
                thread.join(timeout)

    def _may_fetch(self, remote: _RemoteKeys, now: float) -> bool:
        if remote.attempted_at is None:
            return True
        elapsed = now - remote.attempted_at
        # A clock that went backwards does not block refreshes forever.
        return not 0 <= elapsed < self.settings.jwks_refresh_min_interval_seconds

    def _fetch_jwks(self, url: str, iss: str) -> dict[str, VerificationKey] | None:
        """GET the allowlisted JWK Set: timeouts, no redirects, size cap; None (and a log line) on failure."""
        extra = {"event": "jwks-fetch", "iss": iss}
        session = self._session or _new_session(self.settings.tls_trust[0])
        try:
            with session.get(url, timeout=JWKS_TIMEOUT, allow_redirects=False, stream=True,
                             headers={"Accept": "application/jwk-set+json, application/json"}) as resp:
                if resp.status_code != 200:
                    log.warning(f"JWK Set fetch answered HTTP {resp.status_code}", extra=extra)
                    return None
                body = b""
                started = time.monotonic()
                for chunk in resp.iter_content(8192):
                    body += chunk
                    if len(body) > JWKS_MAX_BYTES:
                        log.warning(f"JWK Set larger than {JWKS_MAX_BYTES} bytes; ignored", extra=extra)
                        return None
                    if time.monotonic() - started > JWKS_TOTAL_SECONDS:
                        log.warning(f"JWK Set not read within {JWKS_TOTAL_SECONDS} s; ignored", extra=extra)
                        return None
        except requests.exceptions.SSLError as exc:
            log.warning(f"JWK Set fetch failed: TLS {tls_failure(exc)} ({trust_hint(self.settings)})",
                        extra=extra | {"reason": tls_failure(exc)})
            return None
        except requests.RequestException as exc:
            log.warning(f"JWK Set fetch failed ({type(exc).__name__})", extra=extra)
            return None
        finally:
            if session is not self._session:
                session.close()
        try:
            keys, problems = parse_jwks(json.loads(body))
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: absurd nesting
            log.warning("JWK Set response is not a JWK Set", extra=extra)
            return None
        for problem in problems:
            log.warning(f"JWK Set {problem}; skipped", extra=extra)
        log.info(f"JWK Set fetched: {len(keys)} usable key(s)", extra=extra)
        return keys


def _new_session(verify: str | bool) -> requests.Session:
    session = new_session(verify)  # no proxies or netrc from the environment; CA trust set explicitly
    session.max_redirects = 0
    return session


def _note_for_log(claims: Mapping[str, Any]) -> None:
    """Expose the (not yet verified) ``iss``/``jti`` to the request's log lines; they are safe to log."""
    if not has_request_context():
        return
    iss, jti = claims.get("iss"), claims.get("jti")
    if isinstance(iss, str):
        g.iss = iss[:MAX_CLAIM_CHARS]
    if isinstance(jti, str):
        g.jti = jti[:MAX_CLAIM_CHARS]


__all__ = [
    "ALLOWED_ALGORITHMS",
    "Authenticator",
    "ReplayCache",
    "TrustedClient",
    "TrustedClientsError",
    "load_trusted_clients",
    "parse_jwk",
    "parse_jwks",
]
