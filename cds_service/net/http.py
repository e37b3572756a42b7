"""Outbound HTTP: sessions that ignore the environment, one preloaded TLS trust context per CA location,
and TLS failures named without quoting the peer. Used by the FHIR client and the JWKS fetcher; this package
imports nothing of the service (the settings pass plain values)."""

from __future__ import annotations

import re
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
from requests.adapters import HTTPAdapter
from requests.utils import DEFAULT_CA_BUNDLE_PATH
from urllib3.util.ssl_ import create_urllib3_context

if TYPE_CHECKING:
    from requests.adapters import _HostParams, _PoolKwargs

# -- connection pooling ------------------------------------------------------------------------------
_local = threading.local()


def thread_session(verify: str | bool, pool_size: int) -> Callable[[], requests.Session]:
    """One ``requests.Session`` per thread (requests does not promise thread safety), pooled and reused.

    ``trust_env=False`` keeps proxies and ``.netrc`` credentials from the environment out; the CA trust is
    therefore applied explicitly (see :func:`new_session` and ``Settings.tls_trust``)."""
    key = (verify, pool_size)

    def factory() -> requests.Session:
        sessions: dict[tuple[str | bool, int], requests.Session] | None = getattr(_local, "sessions", None)
        if sessions is None:
            sessions = _local.sessions = {}
        session = sessions.get(key)
        if session is None:
            session = new_session(verify, pool_size=pool_size)
            sessions[key] = session
        return session

    return factory


_contexts: dict[str | bool, ssl.SSLContext] = {}
_contexts_lock = threading.Lock()


def trust_context(verify: str | bool) -> ssl.SSLContext:
    """The TLS client context for a CA file or directory (``True``: certifi), built once per process.

    ``requests`` given a CA *path* loads it again for every new connection (about 200-370 ms for the system
    store here, measured); one shared, preloaded context makes that a one-off at start."""
    with _contexts_lock:
        context = _contexts.get(verify)
        if context is None:
            context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
            location = DEFAULT_CA_BUNDLE_PATH if verify is True else str(verify)
            if Path(location).is_dir():
                context.load_verify_locations(capath=location)
            else:
                context.load_verify_locations(cafile=location)
            _contexts[verify] = context
        return context


class _TrustAdapter(HTTPAdapter):
    """An adapter whose https connections verify against one preloaded :func:`trust_context`."""

    def __init__(self, context: ssl.SSLContext, pool_size: int) -> None:
        self._context = context
        super().__init__(pool_connections=4, pool_maxsize=pool_size, max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, verify, cert)  # type: ignore[no-untyped-call]  # untyped in the stubs
        if url.lower().startswith("https"):  # the CAs are in the context already: never load them again
            conn.cert_reqs = "CERT_REQUIRED"
            conn.ca_certs = None
            conn.ca_cert_dir = None

    def build_connection_pool_key_attributes(self, request: requests.PreparedRequest, verify: bool | str,
                                             cert: str | tuple[str, str] | None = None,
                                             ) -> tuple[_HostParams, _PoolKwargs]:
        host, pool = super().build_connection_pool_key_attributes(request, verify, cert)
        pool.pop("ca_certs", None)
        pool.pop("ca_cert_dir", None)
        pool["cert_reqs"] = "CERT_REQUIRED"
        pool["ssl_context"] = self._context
        return host, pool


def new_session(verify: str | bool, *, pool_size: int = 4) -> requests.Session:
    """A session that ignores the environment (no proxies, no netrc) and verifies TLS against ``verify``."""
    session = requests.Session()
    session.trust_env = False
    session.verify = verify
    adapter = _TrustAdapter(trust_context(verify), pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def trust_hint(source: str) -> str:
    """Where the trusted CAs came from (``Settings.tls_trust[1]``), and what to set, for TLS failure messages."""
    if source == "NMS_CDS_CA_BUNDLE":
        return "trusted CAs from NMS_CDS_CA_BUNDLE"
    return f"trusted CAs from {source}; set NMS_CDS_CA_BUNDLE for a private CA"


_VERIFY_REASON = re.compile(r"certificate verify failed: ([A-Za-z][A-Za-z ,()-]{0,80})")


def tls_failure(exc: BaseException) -> str:
    """Name a TLS failure from its exception chain without quoting anything but OpenSSL's fixed reason text:
    ``certificate verify failed (unable to get local issuer certificate)`` or ``handshake failed``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    texts: list[str] = []
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts.append(str(current))
        texts.extend(str(arg) for arg in getattr(current, "args", ()))
        current = current.__cause__ or current.__context__ or getattr(current, "reason", None)
        if not isinstance(current, BaseException):
            current = None
    joined = " ".join(texts)
    match = _VERIFY_REASON.search(joined)
    if match:
        reason = match.group(1).split(", certificate is not valid")[0].strip().rstrip(" (")
        return f"certificate verify failed ({reason})"
    if "CERTIFICATE_VERIFY_FAILED" in joined or "certificate verify failed" in joined:
        return "certificate verify failed"
    return "handshake failed"
