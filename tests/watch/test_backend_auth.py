"""SMART Backend Services: the watcher's token from a real OAuth 2 authorization server built on Authlib
(client credentials, the client authenticated by a signed JWT assertion checked against its registered key)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import jwt as pyjwt
import pytest
import requests
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from cds_service.watch.auth import BackendToken
from tests.conftest import make_settings

CLIENT_ID = "nms-cds-watch"
KID = "watch-es384"


@dataclass
class _Client(ClientMixin):  # type: ignore[misc]
    client_id: str
    public_pem: bytes

    def get_client_id(self) -> str:
        return self.client_id

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in scope.split() if s.startswith("system/"))

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == JWTBearerClientAssertion.CLIENT_AUTH_METHOD

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"


@dataclass
class _As:
    url: str
    issued: list[dict[str, Any]] = field(default_factory=list)
    assertions: list[str] = field(default_factory=list)


@pytest.fixture
def authorization_server() -> Iterator[tuple[_As, bytes]]:
    private = ec.generate_private_key(ec.SECP384R1())
    private_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    clients = {CLIENT_ID: _Client(CLIENT_ID, public_pem)}
    seen_jti: set[str] = set()
    app = Flask("backend-as")
    state: dict[str, Any] = {}

    def save_token(token: dict[str, Any], request: Any) -> None:
        state["as"].issued.append(dict(token))

    server = AuthorizationServer(app, query_client=clients.get, save_token=save_token)

    class _Assertion(JWTBearerClientAssertion):  # type: ignore[misc]
        def get_audiences(self) -> list[str]:
            return [state["as"].url + "/token"]

        def resolve_client_public_key(self, client: _Client) -> Any:
            from joserfc.jwk import ECKey

            return ECKey.import_key(client.public_pem)

        def process_assertion_claims(self, assertion: str, resolve_key: Any) -> Any:
            # SMART Backend Services names RS384 and ES384; the JOSE library's default list has neither
            from authlib.oauth2.rfc6749.errors import InvalidClientError
            from joserfc import jwt
            from joserfc.errors import JoseError

            try:
                token = jwt.decode(assertion, resolve_key, algorithms=["ES384", "RS384"])
            except JoseError as exc:
                raise InvalidClientError(description=exc.description) from exc
            self.verify_claims(token.claims)
            return token.claims

        def validate_jti(self, claims: Any, jti: str) -> bool:
            if jti in seen_jti:
                return False
            seen_jti.add(jti)
            return True

    server.register_client_auth_method(JWTBearerClientAssertion.CLIENT_AUTH_METHOD, _Assertion())
    class _ClientCredentials(grants.ClientCredentialsGrant):  # type: ignore[misc]
        TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = [JWTBearerClientAssertion.CLIENT_AUTH_METHOD]

    server.register_grant(_ClientCredentials)

    @app.post("/token")
    def token() -> Any:
        from flask import request

        state["as"].assertions.append(request.form.get("client_assertion", ""))
        return server.create_token_response()

    wsgi: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=wsgi.serve_forever, daemon=True)
    thread.start()
    state["as"] = _As(f"http://127.0.0.1:{wsgi.server_port}")
    try:
        yield state["as"], private_pem
    finally:
        wsgi.shutdown()
        wsgi.server_close()
        thread.join(10)


def test_client_credentials_with_a_signed_assertion(authorization_server: tuple[_As, bytes], tmp_path: Path) -> None:
    auth_server, pem = authorization_server
    key_file = tmp_path / "watch-key.pem"
    key_file.write_bytes(pem)
    settings = make_settings(watch_client_id=CLIENT_ID, watch_token_url=auth_server.url + "/token",
                             watch_key_id=KID, watch_private_key_file=key_file)
    with requests.Session() as session:
        source = BackendToken(settings, session, kid=KID)
        first = source()
        assert first and source() == first  # reused until shortly before it expires
    assert len(auth_server.issued) == 1
    assert auth_server.issued[0]["scope"].split() == settings.watch_scope.split()
    header = pyjwt.get_unverified_header(auth_server.assertions[0])
    claims = pyjwt.decode(auth_server.assertions[0], options={"verify_signature": False})
    assert header["alg"] == "ES384" and header["kid"] == KID
    assert claims["iss"] == claims["sub"] == CLIENT_ID and claims["aud"] == auth_server.url + "/token"
    assert claims["exp"] - claims["iat"] <= 300 and claims["jti"]
    assert claims["exp"] > time.time()


def test_a_wrong_key_is_refused(authorization_server: tuple[_As, bytes], tmp_path: Path) -> None:
    auth_server, _ = authorization_server
    other = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    key_file = tmp_path / "other.pem"
    key_file.write_bytes(other)
    settings = make_settings(watch_client_id=CLIENT_ID, watch_token_url=auth_server.url + "/token",
                             watch_private_key_file=key_file)
    with requests.Session() as session, pytest.raises(Exception, match="invalid_client"):
        BackendToken(settings, session)()
    assert auth_server.issued == []
