"""Shared by the security tests (tests/auth, tests/web, tests/net, tests/serve): a JWT-mode app factory with
the clock pinned, trusted clients, token and request builders, and the rejection check (status, bare body, no
outbound call, no secret in any log record, the logged reason)."""


from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient

from cds_service.app import create_app
from cds_service.logs import JsonFormatter
from cds_service.services.templates import prefetch_templates
from tests.conftest import FHIR_BASE, dataset_json, make_settings
from tests.helpers.jwt_helpers import (
    SPEC_PUBLIC_JWKS_FILE,
    SigningKey,
    ec_key,
    jwks,
    make_token,
    rsa_key,
    write_trusted_clients,
)
from tests.helpers.outcome import UNAUTHORIZED

BASE = "https://cds.example.org"
ISS = "https://ehr.example.org"
SPEC_ISS = "https://fhir-ehr.example.com/"
SPEC_JKU = "https://fhir-ehr.example.com/jwk_uri"  # the jku of the specification's example JWT header
JWKS_URL = "https://keys.ehr.example.org/.well-known/jwks.json"
ROTATING_ISS = "https://rotating.example.org"
NOW = 1_790_000_000.0
DISCOVERY = "/cds-services"
SERVICE = "/cds-services/nms-order-sign"
FEEDBACK = SERVICE + "/feedback"
ROUTES = {"GET": DISCOVERY, "POST": SERVICE}
ACCESS_TOKEN = "fhir-access-token-4cd1d9a8"
EMPTY_BUNDLE = {"resourceType": "Bundle", "type": "searchset", "entry": []}


def trusted_ec() -> SigningKey:
    return ec_key("ehr-es384")


def any_rsa() -> SigningKey:
    """An RSA key published without ``alg``: it may verify RS384 and RS256."""
    return rsa_key("ehr-rsa-no-alg", "RS256")


def default_clients() -> list[dict[str, Any]]:
    no_alg = any_rsa().public_jwk()
    del no_alg["alg"]
    keys = jwks(trusted_ec(), rsa_key("ehr-rs384", "RS384"), ec_key("ehr-es256", "P-256"))
    keys["keys"].append(no_alg)
    return [
        {"iss": ISS, "jwks": keys},
        {"iss": SPEC_ISS, "jwks": dataset_json(SPEC_PUBLIC_JWKS_FILE), "jku": [SPEC_JKU]},
        {"iss": ROTATING_ISS, "jwks_url": JWKS_URL},
    ]


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def build(tmp_path: Path) -> Iterator[Callable[..., Flask]]:
    """Factory for apps in JWT mode, production settings, the clock pinned (``app.config['CLOCK']``)."""
    apps: list[Flask] = []

    def _build(clients: list[dict[str, Any]] | None = None, clock: Clock | None = None, **overrides: Any) -> Flask:
        path = write_trusted_clients(tmp_path / f"trusted-{len(apps)}.json",
                                     default_clients() if clients is None else clients)
        options: dict[str, Any] = {"auth": "jwt", "environment": "production", "public_base_url": BASE,
                                   "trusted_clients": path, "cors_origins": ["https://ehr.example.org"]}
        options.update(overrides)
        app = create_app(make_settings(**options))
        app.config["CLOCK"] = clock or Clock()
        app.extensions["nms_cds"].authenticator.clock = app.config["CLOCK"]
        apps.append(app)
        return app

    yield _build
    for app in apps:
        app.extensions["nms_cds"].close()


@pytest.fixture
def app(build: Callable[..., Flask]) -> Flask:
    return build()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def outbound() -> Iterator[responses.RequestsMock]:
    """Every outbound HTTP request is recorded (and refused unless a test registers an answer)."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)


def hook_body(**overrides: Any) -> dict[str, Any]:
    """An order-sign call that would make the service query the FHIR server (no prefetch, a bearer token)."""
    body: dict[str, Any] = {
        "hook": "order-sign",
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": FHIR_BASE,
        "fhirAuthorization": {"access_token": ACCESS_TOKEN, "token_type": "Bearer", "expires_in": 300,
                              "scope": "patient/*.read", "subject": "cds-service"},
        "context": {"userId": "Practitioner/example", "patientId": "p1",
                    "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": {
                        "resourceType": "MedicationRequest", "id": "d1", "status": "draft", "intent": "order",
                        "subject": {"reference": "Patient/p1"},
                        "medicationCodeableConcept": {"coding": [{
                            "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "5093"}]}}}]}},
    }
    body.update(overrides)
    return body


def prefetched_body(**overrides: Any) -> dict[str, Any]:
    """An order-sign call that needs no FHIR server at all (every prefetch key answered empty)."""
    body = hook_body(prefetch={key: None for key in prefetch_templates()})
    body.pop("fhirAuthorization")
    body.pop("fhirServer")
    body.update(overrides)
    return body


def token(key: SigningKey | None = None, *, path: str = SERVICE, iss: str = ISS, now: float = NOW,
          **kwargs: Any) -> str:
    return make_token(key or trusted_ec(), iss=iss, aud=BASE + path, now=now, **kwargs)


def send(client: FlaskClient, method: str, path: str, *, jwt_token: str | None = None,
         authorization: str | None = None, body: Any = None, **kwargs: Any) -> Any:
    headers = dict(kwargs.pop("headers", {}))
    if authorization is not None:
        headers["Authorization"] = authorization
    elif jwt_token is not None:
        headers["Authorization"] = f"Bearer {jwt_token}"
    if method == "POST" and body is None and "data" not in kwargs:
        body = hook_body() if path == SERVICE else {"feedback": [
            {"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": "2026-11-24T12:00:00Z"}]}
    return client.open(path, method=method, json=body, headers=headers, **kwargs)


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    formatter = JsonFormatter()
    return "\n".join(formatter.format(r) + " " + r.getMessage() + " " + repr(r.__dict__) for r in caplog.records)


def auth_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [str(getattr(r, "reason", "")) for r in caplog.records if getattr(r, "event", None) == "auth-failed"]


def assert_rejected(resp: Any, caplog: pytest.LogCaptureFixture, outbound: responses.RequestsMock,
                    reason: str, *secrets: str) -> None:
    assert resp.status_code == 401
    assert resp.get_json() == UNAUTHORIZED
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="cds-services"'  # RFC 6750, without detail
    assert len(outbound.calls) == 0, [c.request.url for c in outbound.calls]
    failures = auth_failures(caplog)
    assert failures and reason in failures[-1], failures
    text = logged_text(caplog)
    for secret in (*secrets, ACCESS_TOKEN):
        if secret:
            assert secret not in text
