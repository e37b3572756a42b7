"""The SMART side of a test EHR, on one loopback port: an OAuth 2 authorization server built on Authlib
(authorization code with PKCE S256 required, public client, EHR launch context) and a FHIR endpoint that accepts
only the tokens it issued and forwards to the local FHIR server.

- ``GET  /fhir/.well-known/smart-configuration``: the SMART discovery document (endpoints, PKCE, capabilities);
- ``GET  /auth/authorize``: Authlib's authorization endpoint; the clinician is already signed in to the EHR, so
  consent is given at once; ``launch`` must be one this EHR issued (:meth:`SmartEhr.launch`), or absent with the
  scope ``launch/patient`` (standalone launch: the patient is :attr:`SmartEhr.picked`), and ``aud`` the FHIR base;
  the code remembers the patient;
- ``POST /auth/token``: Authlib's token endpoint (``code_verifier`` checked); the answer carries ``patient``;
- ``/fhir/<path>``: Authlib's resource protector (an unknown, expired or missing token is 401), then the local
  FHIR server's answer with its base rewritten to this one (``next`` links stay on this server).

Everything runs on a werkzeug thread (:class:`ThreadedServer`); :meth:`SmartEhr.stop` shuts it and its
connection pool down.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import requests
from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2.rfc6749 import AuthorizationCodeMixin, ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7636 import CodeChallenge
from flask import Flask, Response, abort, jsonify, request
from werkzeug.serving import BaseWSGIServer, make_server


class ThreadedServer:
    """A WSGI app on 127.0.0.1 (a free port) served by a werkzeug thread until :meth:`stop`."""

    def __init__(self, app: Any, port: int = 0) -> None:
        self.server: BaseWSGIServer = make_server("127.0.0.1", port, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name=f"wsgi-{self.server.server_port}",
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@dataclass
class Client(ClientMixin):
    client_id: str
    redirect_uri: str

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_allowed_scope(self, scope: str) -> str:
        return scope

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri == self.redirect_uri

    def check_client_secret(self, client_secret: str) -> bool:
        return False  # a public client has none

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "none"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class Code(AuthorizationCodeMixin):
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    code_challenge: str | None
    code_challenge_method: str | None
    patient: str

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


@dataclass
class Token(TokenMixin):
    access_token: str
    client_id: str
    scope: str
    issued_at: float
    expires_in: int
    patient: str

    def check_client(self, client: ClientMixin) -> bool:
        return bool(client.get_client_id() == self.client_id)

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.time() > self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return False


class SmartEhr:
    """The authorization server and the token-checking FHIR endpoint (module docstring)."""

    def __init__(self, fhir_upstream: str, client_id: str, redirect_uri: str) -> None:
        self.upstream = fhir_upstream.rstrip("/")
        self.client = Client(client_id, redirect_uri)
        self.launches: dict[str, str] = {}
        self.picked = ""  # the patient the clinician picks at a standalone launch (launch/patient)
        self.codes: dict[str, Code] = {}
        self.tokens: dict[str, Token] = {}
        self.fhir_reads: Counter[str] = Counter()  # resource type -> reads with a valid token
        self.refused = 0  # FHIR requests without a valid token
        self.session = requests.Session()
        self.app = self._build()
        self.server = ThreadedServer(self.app)
        self.fhir_base = f"{self.server.url}/fhir"

    def launch(self, patient_id: str) -> str:
        """A launch id for ``patient_id``, as an EHR issues it when it opens the app."""
        launch = secrets.token_urlsafe(12)
        self.launches[launch] = patient_id
        return launch

    def stop(self) -> None:
        self.server.stop()
        self.session.close()

    # --- the app -------------------------------------------------------------------------------------

    def _build(self) -> Flask:
        ehr = self
        app = Flask("smart_ehr")
        app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {"authorization_code": 3600}

        class CodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
            TOKEN_ENDPOINT_AUTH_METHODS = ["none"]  # noqa: RUF012 - Authlib's class attribute

            def save_authorization_code(self, code: str, req: Any) -> None:
                data = req.payload.data
                ehr.codes[code] = Code(code, req.client.get_client_id(), req.payload.redirect_uri, req.scope or "",
                                       data.get("code_challenge"), data.get("code_challenge_method"),
                                       ehr.launches[data["launch"]] if data.get("launch") else ehr.picked)

            def query_authorization_code(self, code: str, client: ClientMixin) -> Code | None:
                found = ehr.codes.get(code)
                return found if found is not None and found.client_id == client.get_client_id() else None

            def delete_authorization_code(self, authorization_code: Code) -> None:
                ehr.codes.pop(authorization_code.code, None)

            def authenticate_user(self, authorization_code: Code) -> dict[str, str]:
                return {"id": "Practitioner/test-clinician"}

        def save_token(token: dict[str, Any], req: Any) -> None:
            code: Code = req.authorization_code
            token["patient"] = code.patient  # SMART launch context
            ehr.tokens[token["access_token"]] = Token(token["access_token"], code.client_id, token.get("scope", ""),
                                                      time.time(), int(token["expires_in"]), code.patient)

        server = AuthorizationServer(app, query_client=lambda cid: ehr.client if cid == ehr.client.client_id
                                     else None, save_token=save_token)
        server.register_grant(CodeGrant, [CodeChallenge(required=True)])

        class Validator(BearerTokenValidator):  # type: ignore[misc]
            def authenticate_token(self, token_string: str) -> Token | None:
                return ehr.tokens.get(token_string)

        protect = ResourceProtector()
        protect.register_token_validator(Validator())

        @app.after_request
        def cors(response: Response) -> Response:
            response.headers["Access-Control-Allow-Origin"] = "*"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, Accept"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            return response

        @app.get("/fhir/.well-known/smart-configuration")
        def smart_configuration() -> Response:
            return jsonify({
                "issuer": ehr.server.url,
                "authorization_endpoint": f"{ehr.server.url}/auth/authorize",
                "token_endpoint": f"{ehr.server.url}/auth/token",
                "grant_types_supported": ["authorization_code"],
                "token_endpoint_auth_methods_supported": ["none"],
                "code_challenge_methods_supported": ["S256"],
                "scopes_supported": ["launch", "launch/patient", "openid", "fhirUser", "patient/*.rs"],
                "response_types_supported": ["code"],
                "capabilities": ["launch-ehr", "launch-standalone", "client-public", "context-ehr-patient",
                                 "context-standalone-patient", "permission-v2", "permission-patient"],
            })

        @app.get("/auth/authorize")
        def authorize() -> Response:
            launch = request.args.get("launch")
            standalone = launch is None and "launch/patient" in request.args.get("scope", "").split()
            if request.args.get("aud", "").rstrip("/") != ehr.fhir_base or not (standalone or launch in ehr.launches):
                abort(400)
            user = {"id": "Practitioner/test-clinician"}  # signed in to the EHR already: consent at once
            grant = server.get_consent_grant(end_user=user)
            response: Response = server.create_authorization_response(grant=grant, grant_user=user)
            return response

        @app.route("/auth/token", methods=["POST", "OPTIONS"])
        def token() -> Response:
            if request.method == "OPTIONS":
                return Response(status=204)
            response: Response = server.create_token_response()
            return response

        @app.route("/fhir/<path:rest>", methods=["GET", "OPTIONS"])
        def fhir(rest: str) -> Response:
            if request.method == "OPTIONS":
                return Response(status=204)
            try:
                protect.acquire_token()
            except Exception:
                ehr.refused += 1
                raise
            ehr.fhir_reads[rest.split("/")[0]] += 1
            upstream = ehr.session.get(f"{ehr.upstream}/{rest}", params=list(request.args.items(multi=True)),
                                       headers={"Accept": "application/fhir+json"}, timeout=10)
            body = upstream.content.replace(ehr.upstream.encode(), ehr.fhir_base.encode())
            return Response(body, status=upstream.status_code,
                            content_type=upstream.headers.get("Content-Type", "application/fhir+json"))

        return app
