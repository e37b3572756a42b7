"""The JWK Sets of clients listed with a ``jwks_url``: fetched with bounds, cached, refreshed without blocking.

Only the allowlisted ``jwks_url`` is ever fetched (never a URL named by a token): timeouts, no redirects, a size
cap and a total read time. An unknown ``kid`` refreshes the set at most once per
``NMS_CDS_JWKS_REFRESH_MIN_INTERVAL_SECONDS``; a refresh without a usable key keeps the cached keys; no lock is
held while fetching. PyJWT's ``PyJWKClient`` has a timeout but no size cap, redirect ban or TLS trust setting.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import requests

from cds_service.auth.clients import TrustedClient
from cds_service.auth.keys import VerificationKey, parse_jwks
from cds_service.config import Settings
from cds_service.net.http import new_session, tls_failure, trust_hint

log = logging.getLogger("cds_service.auth")

JWKS_MAX_BYTES = 64 * 1024
JWKS_TIMEOUT = (2.0, 3.0)  # connect, read (seconds)
JWKS_TOTAL_SECONDS = 5.0  # a JWK Set trickled slower than this is abandoned
#: A fetched JWK Set older than this is re-fetched on next use (rate limit still applies), so removed keys stop working.
JWKS_MAX_AGE_SECONDS = 3600.0
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


class JwksCache:
    """The remote key sets of the trusted clients (one instance per worker process)."""

    def __init__(self, settings: Settings, clients: Mapping[str, TrustedClient],
                 session: requests.Session | None = None) -> None:
        self.settings = settings
        self._remote = {c.jwks_url: _RemoteKeys() for c in clients.values() if c.jwks_url}
        self._session = session  # None: a fresh session per (rare) JWKS fetch, so no session is shared by threads

    def find(self, client: TrustedClient, kid: str, now: float) -> VerificationKey | None:
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

    def join(self, timeout: float = 10.0) -> None:
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
            log.warning(f"JWK Set fetch failed: TLS {tls_failure(exc)} ({trust_hint(self.settings.tls_trust[1])})",
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
