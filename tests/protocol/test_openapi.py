"""The OpenAPI document (``GET /openapi.json``) is valid OpenAPI 3.1, in sync with the Flask routes, and
describes what real calls answer: every response below is validated against its documented schema."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from cds_service.app import create_app
from cds_service.devtools import fixtures
from cds_service.protocol.openapi import openapi_document
from tests.conftest import make_settings
from tests.helpers.jwt_helpers import ec_key, jwks, make_token, write_trusted_clients
from tests.protocol.test_protocol import hook_request

URL = "/cds-services/nms-order-sign"
AUTOMATIC_METHODS = {"HEAD", "OPTIONS"}  # Flask adds these to every rule; CORS preflight is not an API


def flask_routes(app: Flask) -> set[tuple[str, str]]:
    routes: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule
        for argument in rule.arguments:
            for converter in ("", "string:", "path:", "int:"):
                path = path.replace(f"<{converter}{argument}>", f"{{{argument}}}")
        routes |= {(path, method.lower()) for method in (rule.methods or set()) - AUTOMATIC_METHODS}
    return routes


def document_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in document["paths"].items() for method in item
            if method in {"get", "post", "put", "patch", "delete"}}


def response_validator(document: dict[str, Any], path: str, method: str, status: int) -> Draft202012Validator:
    responses = document["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} answered {status}, which is not documented"
    schema = dict(responses[str(status)]["content"]["application/json"]["schema"])
    schema["components"] = document["components"]  # so "#/components/schemas/..." resolves
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def assert_documented(document: dict[str, Any], path: str, method: str, response: Any) -> None:
    validator = response_validator(document, path, method, response.status_code)
    errors = sorted(validator.iter_errors(response.get_json()), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
    assert response.headers.get("X-Request-Id")
    assert response.mimetype == "application/json"


@pytest.fixture
def document(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.get_json()
    return body


def test_document_is_valid_openapi_3(document: dict[str, Any]) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document)
    assert document["openapi"].startswith("3.")


def test_every_route_is_documented_and_nothing_else(app: Flask, document: dict[str, Any]) -> None:
    assert flask_routes(app) == document_routes(document)
    assert {("/cds-services", "get"), ("/cds-services/{service_id}", "post"),
            ("/cds-services/{service_id}/feedback", "post"), ("/healthz", "get"),
            ("/openapi.json", "get"), ("/metrics", "get"), ("/readyz", "get"), ("/app/", "get"),
            ("/app/{name}", "get"), ("/app/api/config", "get"), ("/app/api/assessment", "post"),
            ("/worklist", "get"), ("/worklist/{entry_id}", "post")} == document_routes(document)


def test_document_names_the_configured_service_and_limits(app: Flask) -> None:
    settings = make_settings(service_id="nms-x", patient_view_service_id="nms-y", max_body_bytes=4096)
    document = openapi_document(settings)
    parameter = document["paths"]["/cds-services/{service_id}"]["post"]["parameters"][0]
    assert parameter["schema"]["enum"] == ["nms-y", "nms-order-select", "nms-x"]
    hooks = [document["components"]["schemas"][r["$ref"].rsplit("/", 1)[1]]["properties"]["hook"]["const"]
             for r in document["components"]["schemas"]["HookRequest"]["oneOf"]]
    assert hooks == ["patient-view", "order-select", "order-sign"]
    assert "4096 bytes" in document["paths"]["/cds-services/{service_id}"]["post"]["responses"]["413"]["description"]
    assert document["servers"] == [{"url": settings.public_base_url}]


# --- real calls against the documented response schemas --------------------------------------------

def test_discovery_health_and_the_document_itself(client: FlaskClient, document: dict[str, Any]) -> None:
    assert_documented(document, "/cds-services", "get", client.get("/cds-services"))
    assert_documented(document, "/healthz", "get", client.get("/healthz"))
    assert_documented(document, "/openapi.json", "get", client.get("/openapi.json"))


@pytest.fixture
def anchored() -> Iterator[FlaskClient]:
    application = create_app(make_settings(fixed_now=fixtures.ANCHOR))
    yield application.test_client()
    application.extensions["nms_cds"].close()


@pytest.mark.parametrize("scenario", ["classic-nms", "early-nms", "iron-pattern", "no-data", "past-nms-rechallenge"])
def test_service_cards_match_the_schema(anchored: FlaskClient, document: dict[str, Any], scenario: str) -> None:
    response = anchored.post(URL, json=fixtures.load_scenario(scenario).request)
    assert response.status_code == 200
    assert_documented(document, "/cds-services/{service_id}", "post", response)


def test_degraded_info_card_matches_the_schema(client: FlaskClient, document: dict[str, Any]) -> None:
    body = hook_request()
    for key in ("temperature", "vitals"):
        body["prefetch"].pop(key)  # not in prefetch and no fhirServer: could not retrieve
    response = client.post(URL, json=body)
    assert response.status_code == 200
    assert response.get_json()["cards"][0]["indicator"] == "info"
    assert_documented(document, "/cds-services/{service_id}", "post", response)


@pytest.mark.parametrize(
    ("path", "payload", "status"),
    [
        (URL, {"hook": "order-sign"}, 400),
        (URL, b"{not json", 400),
        (URL, b"[" * 100 + b"]" * 100, 400),
        ("/cds-services/unknown", hook_request(), 404),
        (URL, {k: v for k, v in hook_request().items() if k != "prefetch"}, 412),
        (URL, b'{"hook": "' + b"x" * (33 * 1024 * 1024) + b'"}', 413),
        (URL + "/feedback", {"feedback": []}, 400),
        ("/cds-services/unknown/feedback", {"feedback": []}, 404),
        (URL + "/feedback", b"x" * (33 * 1024 * 1024), 413),
    ],
    ids=["400-missing", "400-json", "400-depth", "404", "412", "413", "feedback-400", "feedback-404", "feedback-413"],
)
def test_error_bodies_match_the_schema(client: FlaskClient, document: dict[str, Any], path: str, payload: Any,
                                       status: int) -> None:
    if isinstance(payload, bytes):
        response = client.post(path, data=payload, content_type="application/json")
    else:
        response = client.post(path, json=payload)
    assert response.status_code == status
    template = "/cds-services/{service_id}/feedback" if path.endswith("/feedback") else "/cds-services/{service_id}"
    assert_documented(document, template, "post", response)
    if status == 412:
        assert response.get_json()["resourceType"] == "OperationOutcome"


def test_feedback_matches_the_schema(client: FlaskClient, document: dict[str, Any]) -> None:
    item = {"card": "0b7c7b8e-4a5a-5a43-9d43-7c2e3f2d9b11", "outcome": "overridden",
            "outcomeTimestamp": "2026-11-24T12:00:00Z",
            "overrideReason": {"reason": {"code": "already-managed", "system": "https://x"}}}
    response = client.post(URL + "/feedback", json={"feedback": [item, {**item, "outcome": "accepted",
                                                                        "acceptedSuggestions": [{"id": "s"}]}]})
    assert response.status_code == 200
    assert_documented(document, "/cds-services/{service_id}/feedback", "post", response)


def test_documented_request_examples_are_accepted(client: FlaskClient, document: dict[str, Any]) -> None:
    """The request schemas accept what the service accepts: fixture requests and the protocol helper."""
    schema = dict(document["components"]["schemas"]["HookRequest"])
    schema["components"] = document["components"]
    validator = Draft202012Validator(schema)
    for scenario in fixtures.load_scenarios():
        assert not list(validator.iter_errors(scenario.request)), scenario.id
    assert not list(validator.iter_errors(hook_request()))
    bad = copy.deepcopy(hook_request())
    bad["context"]["patientId"] = "a/b"
    assert list(validator.iter_errors(bad))
    assert client.post(URL, json=bad).status_code == 400


# --- with JWT authentication on ---------------------------------------------------------------------

@pytest.fixture
def jwt_app(tmp_path: Path) -> Iterator[Flask]:
    key = ec_key()
    trusted = write_trusted_clients(tmp_path / "trusted.json", [{"iss": "https://ehr.test", "jwks": jwks(key)}])
    application = create_app(make_settings(auth="jwt", environment="production", trusted_clients=trusted,
                                           fixed_now=fixtures.ANCHOR))
    yield application
    application.extensions["nms_cds"].close()


def test_with_jwt_the_document_is_public_and_declares_bearer_auth(jwt_app: Flask) -> None:
    client = jwt_app.test_client()
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document = response.get_json()
    pytest.importorskip("openapi_spec_validator").validate(document)
    assert document["components"]["securitySchemes"]["cdsClientJwt"]["scheme"] == "bearer"
    assert document["security"] == [{"cdsClientJwt": []}]
    assert document["paths"]["/healthz"]["get"]["security"] == []
    assert document["paths"]["/openapi.json"]["get"]["security"] == []
    assert client.get("/healthz").status_code == 200

    unauthorized = client.get("/cds-services")
    assert unauthorized.status_code == 401
    assert_documented(document, "/cds-services", "get", unauthorized)
    denied = client.post(URL, json=hook_request())
    assert denied.status_code == 401
    assert_documented(document, "/cds-services/{service_id}", "post", denied)

    base = "http://127.0.0.1:8080"
    token = make_token(ec_key(), iss="https://ehr.test", aud=base + URL, now=time.time())
    ok = client.post(URL, json=fixtures.load_scenario("classic-nms").request,
                     headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200, ok.get_data(as_text=True)
    assert_documented(document, "/cds-services/{service_id}", "post", ok)
    assert json.loads(ok.get_data())["cards"][0]["indicator"] == "critical"
