"""SMART Backend Services for ``nms-cds watch``: a client-credentials token, the client authenticated with a
signed JWT assertion (``private_key_jwt``), done by Authlib.

SMART App Launch 2 "Backend Services" asks that the assertion live at most five minutes and name the key
(``kid``); Authlib's default lifetime is an hour, so :class:`_SmartAssertion` signs with 300 s. The access
token is reused until 30 s before it expires. Without ``NMS_CDS_WATCH_CLIENT_ID`` the watcher reads an open
server (the local FHIR server of ``make run``) and sends no token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from cds_service.config import Settings

ASSERTION_SECONDS = 300
REFRESH_MARGIN_SECONDS = 30


def _private_key_jwt(token_url: str, alg: str, kid: str | None) -> Any:
    from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign

    class _SmartAssertion(PrivateKeyJWT):  # type: ignore[misc]
        def sign(self, auth: Any, token_endpoint: str) -> Any:
            return private_key_jwt_sign(auth.client_secret, client_id=auth.client_id, token_endpoint=token_endpoint,
                                        alg=alg, header={"kid": kid} if kid else None, expires_in=ASSERTION_SECONDS)

    return _SmartAssertion(token_url, alg=alg)


def _signing_key(pem: bytes) -> tuple[Any, str]:
    """The private key as the JOSE library Authlib uses wants it, and its algorithm (ES384 or RS384)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from joserfc.jwk import ECKey, RSAKey

    if isinstance(load_pem_private_key(pem, password=None), ec.EllipticCurvePrivateKey):
        return ECKey.import_key(pem), "ES384"
    return RSAKey.import_key(pem), "RS384"


class BackendToken:
    """A cached SMART Backend Services access token."""

    def __init__(self, settings: Settings, session: requests.Session, *, kid: str | None = None) -> None:
        if not (settings.watch_token_url and settings.watch_private_key_file and settings.watch_client_id):
            raise ValueError("SMART Backend Services needs NMS_CDS_WATCH_CLIENT_ID, NMS_CDS_WATCH_TOKEN_URL and "
                             "NMS_CDS_WATCH_PRIVATE_KEY_FILE")
        self.settings = settings
        self.session = session
        self.key, self.alg = _signing_key(settings.watch_private_key_file.read_bytes())
        self.kid = kid
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            if self._token is None or time.time() > self._expires - REFRESH_MARGIN_SECONDS:
                self._fetch()
            assert self._token is not None
            return self._token

    def _fetch(self) -> None:
        from authlib.integrations.requests_client import OAuth2Session

        s = self.settings
        assert s.watch_token_url is not None
        auth = _private_key_jwt(s.watch_token_url, self.alg, self.kid)
        with OAuth2Session(s.watch_client_id, self.key, token_endpoint_auth_method=auth, scope=s.watch_scope) as oauth:
            oauth.trust_env = False
            oauth.verify = self.session.verify
            token = oauth.fetch_token(s.watch_token_url, grant_type="client_credentials",
                                      timeout=(s.fhir_connect_timeout, s.fhir_read_timeout))
        self._token = str(token["access_token"])
        self._expires = time.time() + float(token.get("expires_in", 300))


def token_source(settings: Settings, session: requests.Session) -> Callable[[], str | None]:
    """What the watcher calls for a token each pass: a BackendToken when configured, else nothing."""
    if settings.watch_client_id is None:
        return lambda: None
    return BackendToken(settings, session, kid=settings.watch_key_id)
