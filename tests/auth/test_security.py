"""The CDS Hooks trust model and the protections a hospital security review asks for.

Every rejected request is checked three ways: the status (and an OperationOutcome without detail for 401),
that nothing else happened (no outbound HTTP call at all, recorded by ``responses``), and that no secret
(the JWT, the FHIR access token) reached any log record. The reason the server logged is checked too, so a
case cannot pass by failing for an unrelated reason.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient
from pydantic import ValidationError

from cds_service import cli
from cds_service.app import create_app
from cds_service.auth import Authenticator, ReplayCache, TrustedClientsError
from cds_service.logs import JsonFormatter
from cds_service.serve.front import nginx_binary
from cds_service.services.templates import prefetch_templates
from tests.conftest import FHIR_BASE, dataset_json, make_settings
from tests.helpers.cdshooks_check import response_problems
from tests.helpers.jwt_helpers import (
    SANDBOX_JKU,
    SPEC_PUBLIC_JWKS_FILE,
    SigningKey,
    claims_for,
    ec_key,
    hs256_with_public_key,
    jwks,
    make_token,
    rsa_key,
    sandbox_entry,
    spec_key,
    tamper,
    unsigned_token,
    write_trusted_clients,
)
from tests.helpers.outcome import UNAUTHORIZED, issue

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


# --- the rejection cases the issue lists, each its own test -------------------------------------------


@pytest.mark.parametrize(("method", "path"), [("GET", DISCOVERY), ("POST", SERVICE), ("POST", FEEDBACK)])
def test_no_token_is_401_on_every_route(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                                        outbound: responses.RequestsMock, method: str, path: str) -> None:
    resp = send(client, method, path)
    assert_rejected(resp, caplog, outbound, "missing Authorization header")


@pytest.mark.parametrize(("authorization", "reason"), [
    ("Bearer not-a-jwt", "malformed token"),
    ("Bearer a.b.c", "malformed token"),
    ("Bearer " + "A" * 9000, "too long"),
    ("Bearer ", "empty bearer token"),
    ("Basic dXNlcjpwYXNz", "not Bearer"),
    ("Bearer eyJhbGciOiJFUzM4NCJ9.bm90IGpzb24.c2ln", "malformed token"),
], ids=["garbage", "three-junk-segments", "huge", "empty", "basic-auth", "payload-not-json"])
def test_malformed_token(client: FlaskClient, caplog: pytest.LogCaptureFixture, outbound: responses.RequestsMock,
                         authorization: str, reason: str) -> None:
    resp = send(client, "POST", SERVICE, authorization=authorization)
    assert_rejected(resp, caplog, outbound, reason, authorization.removeprefix("Bearer ").strip())


def test_alg_none(client: FlaskClient, caplog: pytest.LogCaptureFixture, outbound: responses.RequestsMock) -> None:
    forged = unsigned_token(claims_for(iss=ISS, aud=BASE + SERVICE, now=NOW), kid=trusted_ec().kid)
    resp = send(client, "POST", SERVICE, jwt_token=forged)
    assert_rejected(resp, caplog, outbound, "algorithm not allowed: none", forged)


@pytest.mark.parametrize("key", [trusted_ec, lambda: rsa_key("ehr-rs384", "RS384")], ids=["ec", "rsa"])
def test_hs256_signed_with_the_public_key_as_secret(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                                                    outbound: responses.RequestsMock,
                                                    key: Callable[[], SigningKey]) -> None:
    forged = hs256_with_public_key(claims_for(iss=ISS, aud=BASE + SERVICE, now=NOW), key())
    resp = send(client, "POST", SERVICE, jwt_token=forged)
    assert_rejected(resp, caplog, outbound, "algorithm not allowed: HS256", forged)


def test_expired(client: FlaskClient, caplog: pytest.LogCaptureFixture, outbound: responses.RequestsMock) -> None:
    jwt_token = token(now=NOW - 400, lifetime=300)  # exp 100 s ago, beyond the 30 s leeway
    resp = send(client, "POST", SERVICE, jwt_token=jwt_token)
    assert_rejected(resp, caplog, outbound, "token expired", jwt_token)


def test_expired_within_leeway_is_accepted(client: FlaskClient) -> None:
    resp = send(client, "POST", SERVICE, jwt_token=token(now=NOW - 320, lifetime=300), body=prefetched_body())
    assert resp.status_code == 200


def test_not_yet_valid_iat_in_the_future(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                                         outbound: responses.RequestsMock) -> None:
    jwt_token = token(now=NOW + 120)
    resp = send(client, "POST", SERVICE, jwt_token=jwt_token)
    assert_rejected(resp, caplog, outbound, "issued in the future", jwt_token)


def test_not_yet_valid_nbf(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                           outbound: responses.RequestsMock) -> None:
    jwt_token = token(nbf=int(NOW) + 120)
    resp = send(client, "POST", SERVICE, jwt_token=jwt_token)
    assert_rejected(resp, caplog, outbound, "not yet valid", jwt_token)


def test_small_clock_skew_is_tolerated(client: FlaskClient) -> None:
    resp = send(client, "POST", SERVICE, jwt_token=token(now=NOW + 20, nbf=int(NOW) + 20), body=prefetched_body())
    assert resp.status_code == 200


@pytest.mark.parametrize("aud", [
    BASE + "/cds-services/other-service",
    BASE + SERVICE + "/",
    BASE + DISCOVERY,
    "http://cds.example.org" + SERVICE,
    [BASE + DISCOVERY, BASE + FEEDBACK],
    [],
], ids=["other-service", "trailing-slash", "discovery-aud", "http-scheme", "list-without-it", "empty-list"])
def test_wrong_aud(client: FlaskClient, caplog: pytest.LogCaptureFixture, outbound: responses.RequestsMock,
                   aud: Any) -> None:
    jwt_token = make_token(trusted_ec(), iss=ISS, aud=aud, now=NOW)
    resp = send(client, "POST", SERVICE, jwt_token=jwt_token)
    assert_rejected(resp, caplog, outbound, "aud", jwt_token)


def test_unknown_iss(client: FlaskClient, caplog: pytest.LogCaptureFixture, outbound: responses.RequestsMock) -> None:
    jwt_token = token(iss="https://attacker.example.net")
    resp = send(client, "POST", SERVICE, jwt_token=jwt_token)
    assert_rejected(resp, caplog, outbound, "issuer not trusted", jwt_token)
    assert any(getattr(r, "iss", None) == "https://attacker.example.net" for r in caplog.records)  # iss is loggable


def test_unknown_kid(client: FlaskClient, caplog: pytest.LogCaptureFixture, outbound: responses.RequestsMock) -> None:
    jwt_token = token(headers={"kid": "no-such-key"})
    resp = send(client, "POST", SERVICE, jwt_token=jwt_token)
    assert_rejected(resp, caplog, outbound, "unknown kid", jwt_token)


def test_bad_signature_other_key_same_kid(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                                          outbound: responses.RequestsMock) -> None:
    impostor = SigningKey(trusted_ec().kid, "ES384", ec_key("impostor").private)
    jwt_token = token(impostor)
    resp = send(client, "POST", SERVICE, jwt_token=jwt_token)
    assert_rejected(resp, caplog, outbound, "bad signature", jwt_token)


def test_bad_signature_tampered_payload(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                                        outbound: responses.RequestsMock) -> None:
    jwt_token = tamper(token())
    resp = send(client, "POST", SERVICE, jwt_token=jwt_token)
    assert_rejected(resp, caplog, outbound, "bad signature", jwt_token)


def test_replayed_jti(client: FlaskClient, caplog: pytest.LogCaptureFixture, outbound: responses.RequestsMock) -> None:
    jwt_token = token()
    first = send(client, "POST", SERVICE, jwt_token=jwt_token, body=prefetched_body())
    assert first.status_code == 200
    replay = send(client, "POST", SERVICE, jwt_token=jwt_token)
    assert_rejected(replay, caplog, outbound, "jti replayed", jwt_token)


def test_replayed_jti_in_a_fresh_token_and_on_another_route(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                                                            outbound: responses.RequestsMock) -> None:
    jti = str(uuid.uuid4())
    assert send(client, "GET", DISCOVERY, jwt_token=token(path=DISCOVERY, jti=jti)).status_code == 200
    again = token(now=NOW + 5, jti=jti)  # another signature, same (iss, jti)
    assert_rejected(send(client, "POST", SERVICE, jwt_token=again), caplog, outbound, "jti replayed", again)


def test_jku_not_the_allowlisted_jwks_url(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                                          outbound: responses.RequestsMock) -> None:
    attacker = ec_key("attacker")
    outbound.get("https://attacker.example.net/jwks.json", json=jwks(attacker))
    jwt_token = token(attacker, iss=ROTATING_ISS, headers={"jku": "https://attacker.example.net/jwks.json"})
    resp = send(client, "POST", SERVICE, jwt_token=jwt_token)
    assert_rejected(resp, caplog, outbound, "jku header not listed for this client", jwt_token)


@pytest.mark.parametrize("signer", [lambda: ec_key("attacker"), trusted_ec], ids=["attacker-key", "trusted-key"])
def test_jku_is_never_fetched_for_a_client_with_static_keys(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                                                            outbound: responses.RequestsMock,
                                                            signer: Callable[[], SigningKey]) -> None:
    """A client with a static key set and no ``jku`` list: any ``jku`` is refused, even on a token that
    its own key signed (the red-team run found such tokens accepted with any ``jku``)."""
    attacker = ec_key("attacker")
    outbound.get("https://attacker.example.net/jwks.json", json=jwks(attacker))
    jwt_token = token(signer(), headers={"jku": "https://attacker.example.net/jwks.json"})
    resp = send(client, "POST", SERVICE, jwt_token=jwt_token)
    assert_rejected(resp, caplog, outbound, "jku header sent, but this client lists no jku", jwt_token)


JKU_LISTED = "https://ehr.example.org/.well-known/jwks.json"


@pytest.mark.parametrize(("jku", "status"), [
    (JKU_LISTED, 200),
    (None, 200),  # no jku header at all: the static keys decide
    (JKU_LISTED + "?", 401),  # compared exactly
    ("https://EHR.example.org/.well-known/jwks.json", 401),
    ("https://attacker.example.net/jwks.json", 401),
    (["https://ehr.example.org/.well-known/jwks.json"], 401),  # not a string
], ids=["listed", "absent", "listed-plus-query", "other-case", "other-host", "array"])
def test_jku_list_of_a_static_key_client(build: Callable[..., Flask], caplog: pytest.LogCaptureFixture,
                                         outbound: responses.RequestsMock, jku: Any, status: int) -> None:
    clients = default_clients()
    clients[0]["jku"] = [JKU_LISTED]
    client = build(clients).test_client()
    jwt_token = token(headers={} if jku is None else {"jku": jku})
    resp = send(client, "POST", SERVICE, jwt_token=jwt_token, body=prefetched_body())
    assert resp.status_code == status
    if status == 401:
        assert_rejected(resp, caplog, outbound, "jku header not listed for this client", jwt_token)
    assert len(outbound.calls) == 0  # a listed jku is a label: never fetched


def test_the_jwks_url_is_an_accepted_jku_and_the_jku_list_adds_others(build: Callable[..., Flask],
                                                                     outbound: responses.RequestsMock) -> None:
    key = ec_key("rot-1")
    outbound.get(JWKS_URL, json=jwks(key))
    other = "https://keys-b.ehr.example.org/jwks.json"
    clients = default_clients()
    clients[2]["jku"] = other
    client = build(clients).test_client()
    for jku in (JWKS_URL, other):
        jwt_token = token(key, iss=ROTATING_ISS, path=DISCOVERY, headers={"jku": jku})
        assert send(client, "GET", DISCOVERY, jwt_token=jwt_token).status_code == 200
    assert [c.request.url for c in outbound.calls] == [JWKS_URL]  # the other jku is never fetched


@pytest.mark.parametrize("header", [
    {"jwk": "ATTACKER_JWK"},  # an embedded key (CVE-2018-0114 style)
    {"x5u": "https://attacker.example.net/cert.pem"},
    {"x5c": ["MIIB"]},
    {"jku": "https://attacker.example.net/jwks.json", "kid": "ehr-es384"},
], ids=["embedded-jwk", "x5u", "x5c", "jku-with-a-trusted-kid"])
def test_keys_named_in_the_header_are_never_used_or_fetched(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                                                            outbound: responses.RequestsMock,
                                                            header: dict[str, Any]) -> None:
    attacker = SigningKey(trusted_ec().kid, "ES384", ec_key("attacker").private)
    outbound.get(re.compile(r"https://attacker\.example\.net/.*"), json=jwks(attacker))
    headers = {k: (attacker.public_jwk() if v == "ATTACKER_JWK" else v) for k, v in header.items()}
    jwt_token = token(attacker, headers=headers)
    resp = send(client, "POST", SERVICE, jwt_token=jwt_token)
    assert_rejected(resp, caplog, outbound, "jku" if "jku" in header else "bad signature", jwt_token)


@pytest.mark.parametrize("header", [{"crit": ["b64"], "b64": False}, {"crit": ["x-unknown"], "x-unknown": 1},
                                    {"crit": []}], ids=["b64", "unknown-extension", "empty"])
def test_critical_header_extensions_are_refused(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                                                outbound: responses.RequestsMock, header: dict[str, Any]) -> None:
    jwt_token = token(headers=header)  # signed by the trusted key; RFC 7515 4.1.11: unknown crit must fail
    assert_rejected(send(client, "POST", SERVICE, jwt_token=jwt_token), caplog, outbound, "malformed token", jwt_token)


@pytest.mark.parametrize(("alg", "reason"), [
    ("es384", "algorithm not allowed: es384"), ("ES512", "algorithm not allowed: ES512"),
    ("PS384", "algorithm not allowed: PS384"), ("ES384\n", "algorithm not allowed: (not shown)"),
    ("<script>", "algorithm not allowed: (not shown)"),
], ids=["lower-case", "es512", "ps384", "newline", "markup"])
def test_algorithm_spellings_are_refused_and_logged_only_as_tokens(client: FlaskClient,
                                                                   caplog: pytest.LogCaptureFixture,
                                                                   outbound: responses.RequestsMock, alg: str,
                                                                   reason: str) -> None:
    forged = unsigned_token(claims_for(iss=ISS, aud=BASE + SERVICE, now=NOW), kid=trusted_ec().kid)
    head = json.loads(base64.urlsafe_b64decode(forged.split(".")[0] + "=="))
    head["alg"] = alg
    forged = base64.urlsafe_b64encode(json.dumps(head).encode()).rstrip(b"=").decode() + forged[forged.index("."):]
    resp = send(client, "POST", SERVICE, jwt_token=forged + "c2ln")
    assert_rejected(resp, caplog, outbound, reason, forged)


def test_oversized_body_is_413(client: FlaskClient, build: Callable[..., Flask], caplog: pytest.LogCaptureFixture,
                               outbound: responses.RequestsMock) -> None:
    small = build(max_body_bytes=4096).test_client()
    body = hook_body(padding="x" * 8192)
    resp = send(small, "POST", SERVICE, jwt_token=token(), body=body)
    assert resp.status_code == 413
    assert resp.is_json and issue(resp.get_json())["code"] == "too-costly"
    assert len(outbound.calls) == 0
    assert ACCESS_TOKEN not in logged_text(caplog)


def test_deep_json_is_400_naming_the_problem(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                                             outbound: responses.RequestsMock) -> None:
    deep = "[" * 200 + "]" * 200
    raw = json.dumps(hook_body())[:-1] + f', "x": {deep}}}'
    resp = send(client, "POST", SERVICE, jwt_token=token(), data=raw, content_type="application/json")
    assert resp.status_code == 400
    assert resp.is_json and "nesting deeper than 64" in issue(resp.get_json())["diagnostics"]
    assert len(outbound.calls) == 0
    assert ACCESS_TOKEN not in logged_text(caplog)


@pytest.mark.parametrize(("data", "fragment"), [
    (b"{not json", "not valid JSON"),
    (b"", "empty"),
    (b'{"hook": "\xff"}', "UTF-8"),
    (b"[]", "JSON object"),
], ids=["syntax", "empty", "not-utf8", "array"])
def test_malformed_bodies_are_clear_400s(client: FlaskClient, outbound: responses.RequestsMock, data: bytes,
                                         fragment: str) -> None:
    resp = send(client, "POST", SERVICE, jwt_token=token(), data=data, content_type="application/json")
    assert resp.status_code == 400
    assert resp.is_json and fragment in issue(resp.get_json())["diagnostics"]
    assert len(outbound.calls) == 0


def test_fhir_server_outside_the_allowlist_is_412_without_a_connection(
        client: FlaskClient, caplog: pytest.LogCaptureFixture, outbound: responses.RequestsMock) -> None:
    outbound.get(re.compile(r"https://fhir\.elsewhere\.example/.*"), json=EMPTY_BUNDLE)
    resp = send(client, "POST", SERVICE, jwt_token=token(), body=hook_body(fhirServer="https://fhir.elsewhere.example/r4"))
    assert resp.status_code == 412
    assert resp.get_json()["resourceType"] == "OperationOutcome"
    assert "allowlist" in resp.get_json()["issue"][0]["diagnostics"].lower()
    assert len(outbound.calls) == 0
    assert ACCESS_TOKEN not in logged_text(caplog)


@pytest.mark.parametrize("server", [
    FHIR_BASE + "-evil",  # prefix of an allowlisted base, but not under it
    "https://fhir.example.org.evil.example/r4",
    "https://user:pass@fhir.example.org/r4",
    FHIR_BASE + "/../admin",  # passes a naive prefix test, then normalised off the allowlisted base
    FHIR_BASE + "/%2e%2e/admin",
    FHIR_BASE + "/.%2E/admin",
    # the red-team run's payloads, accepted and queried with the token before
    FHIR_BASE + "/..;/admin",
    FHIR_BASE + "/\uff0e\uff0e/admin",
    FHIR_BASE + "/%252e%252e/admin",
    FHIR_BASE + "?@collector.evil.example/",
], ids=["sibling-path", "suffix-host", "credentials", "dot-dot", "encoded-dot-dot", "mixed-dot-dot",
        "dot-dot-semicolon", "fullwidth-dots", "double-encoded", "query-userinfo"])
def test_look_alike_fhir_servers_are_not_contacted(client: FlaskClient, outbound: responses.RequestsMock,
                                                   caplog: pytest.LogCaptureFixture, server: str) -> None:
    outbound.get(re.compile(r".*"), json=EMPTY_BUNDLE)
    resp = send(client, "POST", SERVICE, jwt_token=token(), body=hook_body(fhirServer=server))
    assert resp.status_code == 412
    assert len(outbound.calls) == 0
    assert "not contacted" in resp.get_json()["issue"][0]["diagnostics"]
    assert ACCESS_TOKEN not in logged_text(caplog)


def test_patient_id_cannot_walk_off_the_fhir_base(client: FlaskClient, outbound: responses.RequestsMock) -> None:
    outbound.get(re.compile(r"https://fhir\.example\.org/.*"), json=EMPTY_BUNDLE)
    body = hook_body()
    body["context"]["patientId"] = ".."
    send(client, "POST", SERVICE, jwt_token=token(), body=body)
    assert not any("/r4/.." in (c.request.url or "") or not (c.request.url or "").startswith(FHIR_BASE + "/")
                   for c in outbound.calls)


def test_redirect_to_another_host_is_not_followed(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                                                  outbound: responses.RequestsMock) -> None:
    outbound.get(re.compile(re.escape(FHIR_BASE) + r"/.*"), status=302,
                 headers={"Location": "https://collector.evil.example/steal"})
    outbound.get(re.compile(r"https://collector\.evil\.example/.*"), json=EMPTY_BUNDLE)
    resp = send(client, "POST", SERVICE, jwt_token=token())
    assert resp.status_code in (200, 412)
    assert resp.status_code == 412 or resp.get_json()["cards"]  # degraded answers say what is missing
    urls = [c.request.url or "" for c in outbound.calls]
    assert urls and all(u.startswith(FHIR_BASE + "/") for u in urls)
    assert not any("evil" in u for u in urls)
    assert ACCESS_TOKEN not in logged_text(caplog)


def test_http_fhir_server_that_is_not_loopback_is_not_contacted(build: Callable[..., Flask],
                                                               outbound: responses.RequestsMock) -> None:
    insecure = "http://fhir.example.org/r4"
    outbound.get(re.compile(r"http://fhir\.example\.org/.*"), json=EMPTY_BUNDLE)
    app = build(fhir_allowlist=[FHIR_BASE, insecure])  # allowlisted, yet plain http off loopback
    resp = send(app.test_client(), "POST", SERVICE, jwt_token=token(), body=hook_body(fhirServer=insecure))
    assert resp.status_code == 412
    assert "https" in resp.get_json()["issue"][0]["diagnostics"] or "allowlist" in resp.get_json()["issue"][0][
        "diagnostics"]
    assert len(outbound.calls) == 0


def test_http_fhir_server_is_contacted_only_when_explicitly_allowed(build: Callable[..., Flask],
                                                                  outbound: responses.RequestsMock) -> None:
    insecure = "http://fhir.example.org/r4"
    outbound.get(re.compile(r"http://fhir\.example\.org/r4/Patient/.*"),
                 json={"resourceType": "Patient", "id": "p1"})
    outbound.get(re.compile(r"http://fhir\.example\.org/r4/\w+\?.*"), json=EMPTY_BUNDLE)
    app = build(fhir_allowlist=[insecure], allow_insecure_fhir=True)
    resp = send(app.test_client(), "POST", SERVICE, jwt_token=token(), body=hook_body(fhirServer=insecure))
    assert resp.status_code == 200
    assert outbound.calls and all((c.request.url or "").startswith(insecure) for c in outbound.calls)


# --- accepted tokens -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [
    trusted_ec, lambda: rsa_key("ehr-rs384", "RS384"), lambda: ec_key("ehr-es256", "P-256"),
    any_rsa, lambda: SigningKey(any_rsa().kid, "RS384", any_rsa().private),
], ids=["ES384", "RS384", "ES256", "RS256-key-without-alg", "RS384-key-without-alg"])
def test_asymmetric_algorithms_are_accepted(client: FlaskClient, key: Callable[[], SigningKey]) -> None:
    resp = send(client, "POST", SERVICE, jwt_token=token(key()), body=prefetched_body())
    assert resp.status_code == 200, resp.get_json()


def test_alg_must_match_the_jwk_alg(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                                    outbound: responses.RequestsMock) -> None:
    # the JWK says RS384: an RS256 signature by the very same key is refused
    jwt_token = token(SigningKey("ehr-rs384", "RS256", rsa_key("ehr-rs384", "RS384").private))
    assert_rejected(send(client, "POST", SERVICE, jwt_token=jwt_token), caplog, outbound, "does not suit", jwt_token)


def test_alg_must_suit_the_key(client: FlaskClient, caplog: pytest.LogCaptureFixture,
                               outbound: responses.RequestsMock) -> None:
    # kid of the P-384 key, signed ES256 with some P-256 key: refused before any signature check
    jwt_token = token(ec_key("other-256", "P-256"), headers={"kid": trusted_ec().kid})
    assert_rejected(send(client, "POST", SERVICE, jwt_token=jwt_token), caplog, outbound, "does not suit", jwt_token)


def test_spec_example_key_verifies(client: FlaskClient) -> None:
    jwt_token = token(spec_key(), iss=SPEC_ISS, headers={"jku": SPEC_JKU})
    resp = send(client, "POST", SERVICE, jwt_token=jwt_token, body=prefetched_body())
    assert resp.status_code == 200


def test_valid_token_on_every_route_with_its_own_aud(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    discovery = token(path=DISCOVERY)
    service = token(path=SERVICE)
    feedback = token(path=FEEDBACK)
    assert send(client, "GET", DISCOVERY, jwt_token=discovery).status_code == 200
    assert send(client, "POST", SERVICE, jwt_token=service, body=prefetched_body()).status_code == 200
    assert send(client, "POST", FEEDBACK, jwt_token=feedback).status_code == 200
    text = logged_text(caplog)
    for secret in (discovery, service, feedback):
        assert secret not in text


def test_aud_as_a_list_containing_the_endpoint(client: FlaskClient) -> None:
    jwt_token = make_token(trusted_ec(), iss=ISS, aud=["https://other.example", BASE + SERVICE], now=NOW)
    assert send(client, "POST", SERVICE, jwt_token=jwt_token, body=prefetched_body()).status_code == 200


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"lifetime": 7200}, "lifetime"),
    ({"drop": ("jti",)}, "jti"),
    ({"drop": ("exp",)}, "exp"),
    ({"drop": ("iat",)}, "iat"),
    ({"drop": ("aud",)}, "aud"),
    ({"exp": "tomorrow"}, "exp"),
    ({"headers": {"typ": "at+jwt"}}, "typ"),
], ids=["lifetime-2h", "no-jti", "no-exp", "no-iat", "no-aud", "exp-string", "wrong-typ"])
def test_claim_rules(client: FlaskClient, caplog: pytest.LogCaptureFixture, outbound: responses.RequestsMock,
                     kwargs: dict[str, Any], reason: str) -> None:
    jwt_token = token(**kwargs)
    assert_rejected(send(client, "POST", SERVICE, jwt_token=jwt_token), caplog, outbound, reason, jwt_token)


def test_tenant_must_match_when_configured(build: Callable[..., Flask], caplog: pytest.LogCaptureFixture,
                                           outbound: responses.RequestsMock) -> None:
    app = build([{"iss": ISS, "jwks": jwks(trusted_ec()), "tenant": "hospital-a"}])
    client = app.test_client()
    ok = send(client, "POST", SERVICE, jwt_token=token(tenant="hospital-a"), body=prefetched_body())
    assert ok.status_code == 200
    for wrong in (token(tenant="hospital-b"), token()):
        assert_rejected(send(client, "POST", SERVICE, jwt_token=wrong), caplog, outbound, "tenant", wrong)


def test_healthz_needs_no_token(client: FlaskClient) -> None:
    assert client.get("/healthz").status_code == 200


# --- jwks_url: allowlisted fetch, cache, rate-limited refresh -----------------------------------------


def test_unknown_kid_fetches_only_the_allowlisted_jwks_url_rate_limited(build: Callable[..., Flask],
                                                                       outbound: responses.RequestsMock) -> None:
    clock = Clock()
    client = build(clock=clock).test_client()
    first, second = ec_key("rot-1"), ec_key("rot-2")
    outbound.get(JWKS_URL, json=jwks(first))
    assert send(client, "GET", DISCOVERY, jwt_token=token(first, iss=ROTATING_ISS, path=DISCOVERY,
                                                          headers={"jku": JWKS_URL})).status_code == 200
    assert len(outbound.calls) == 1
    # cached: a second token with the same kid does not fetch again
    assert send(client, "GET", DISCOVERY, jwt_token=token(first, iss=ROTATING_ISS, path=DISCOVERY)).status_code == 200
    assert len(outbound.calls) == 1
    # rotation: the new kid is unknown; within the refresh interval no fetch happens
    outbound.replace(responses.GET, JWKS_URL, json=jwks(first, second))
    clock.now += 10
    assert send(client, "GET", DISCOVERY,
                jwt_token=token(second, iss=ROTATING_ISS, path=DISCOVERY, now=clock.now)).status_code == 401
    assert len(outbound.calls) == 1
    # after the interval, an unknown kid triggers one refresh and the rotated key works
    clock.now += 60
    assert send(client, "GET", DISCOVERY,
                jwt_token=token(second, iss=ROTATING_ISS, path=DISCOVERY, now=clock.now)).status_code == 200
    assert len(outbound.calls) == 2
    assert all(c.request.url == JWKS_URL for c in outbound.calls)


def test_jwks_url_redirect_is_not_followed(build: Callable[..., Flask], outbound: responses.RequestsMock) -> None:
    key = ec_key("rot-1")
    outbound.get(JWKS_URL, status=302, headers={"Location": "https://attacker.example.net/jwks.json"})
    outbound.get("https://attacker.example.net/jwks.json", json=jwks(key))
    resp = send(build().test_client(), "GET", DISCOVERY, jwt_token=token(key, iss=ROTATING_ISS, path=DISCOVERY))
    assert resp.status_code == 401
    assert [c.request.url for c in outbound.calls] == [JWKS_URL]


@pytest.mark.parametrize("answer", [
    {"body": "x" * (70 * 1024), "content_type": "application/json"},
    {"body": "not json", "content_type": "application/json"},
    {"status": 500, "json": {}},
    {"json": {"keys": [{"kty": "oct", "kid": "rot-1", "k": "c2VjcmV0"}]}},
], ids=["too-large", "not-json", "http-500", "symmetric-key"])
def test_unusable_jwks_answers_give_401(build: Callable[..., Flask], outbound: responses.RequestsMock,
                                        caplog: pytest.LogCaptureFixture, answer: dict[str, Any]) -> None:
    outbound.get(JWKS_URL, **answer)
    jwt_token = token(ec_key("rot-1"), iss=ROTATING_ISS, path=DISCOVERY)
    resp = send(build().test_client(), "GET", DISCOVERY, jwt_token=jwt_token)
    assert resp.status_code == 401
    assert len(outbound.calls) == 1
    assert "c2VjcmV0" not in logged_text(caplog)


@pytest.mark.parametrize("answer", [
    {"json": {"keys": []}},
    {"json": {"keys": [{"kty": "oct", "kid": "rot-1", "k": "c2VjcmV0"}]}},
    {"json": {"keys": [{"kty": "EC", "crv": "P-521", "kid": "x", "x": "AA", "y": "AA"}]}},
    {"body": "<html>maintenance</html>", "content_type": "text/html"},
    {"json": {"keys": "none"}},
    {"status": 503, "json": {}},
    {"body": "[" * 60000, "content_type": "application/json"},
], ids=["empty-set", "only-oct", "only-unsupported", "garbage", "keys-not-array", "http-503", "nested-60000-deep"])
def test_a_refresh_without_a_usable_key_keeps_the_previous_keys(build: Callable[..., Flask],
                                                                outbound: responses.RequestsMock,
                                                                caplog: pytest.LogCaptureFixture,
                                                                answer: dict[str, Any]) -> None:
    """The red-team run: after one token with a random kid made the client's JWKS answer ``{"keys":[]}``,
    that client's valid tokens got 401 for 62 s. A set without a usable key now never replaces the cache."""
    clock = Clock()
    client = build(clock=clock).test_client()
    key = ec_key("rot-1")
    outbound.get(JWKS_URL, json=jwks(key))

    def valid() -> int:
        return int(send(client, "GET", DISCOVERY,
                        jwt_token=token(key, iss=ROTATING_ISS, path=DISCOVERY, now=clock.now)).status_code)

    assert valid() == 200
    outbound.replace(responses.GET, JWKS_URL, **answer)
    clock.now += 61  # past the refresh interval: an unauthenticated random kid may trigger a refresh
    forged = token(ec_key("random-kid"), iss=ROTATING_ISS, path=DISCOVERY, now=clock.now)
    assert send(client, "GET", DISCOVERY, jwt_token=forged).status_code == 401
    assert len(outbound.calls) == 2
    assert [valid() for _ in range(3)] == [200, 200, 200]  # at once, and without another fetch
    assert len(outbound.calls) == 2
    # an hour later the set is old: the request is answered from the cache and one refresh runs behind it
    clock.now += 3600
    assert valid() == 200
    client.application.extensions["nms_cds"].authenticator.join_refreshes()
    assert len(outbound.calls) == 3
    assert valid() == 200
    assert "c2VjcmV0" not in logged_text(caplog)
    if isinstance(answer.get("json", {}).get("keys"), list):
        assert any("keeping the 1 key(s)" in r.getMessage() for r in caplog.records)


def test_a_usable_refreshed_set_replaces_the_old_one(build: Callable[..., Flask],
                                                     outbound: responses.RequestsMock) -> None:
    """Removal still works: a set that has usable keys replaces the cache, so a removed key stops working."""
    clock = Clock()
    client = build(clock=clock).test_client()
    old, new = ec_key("rot-1"), ec_key("rot-2")
    outbound.get(JWKS_URL, json=jwks(old))
    assert send(client, "GET", DISCOVERY, jwt_token=token(old, iss=ROTATING_ISS, path=DISCOVERY)).status_code == 200
    outbound.replace(responses.GET, JWKS_URL, json=jwks(new))
    clock.now += 61
    assert send(client, "GET", DISCOVERY, jwt_token=token(new, iss=ROTATING_ISS, path=DISCOVERY,
                                                          now=clock.now)).status_code == 200
    assert send(client, "GET", DISCOVERY, jwt_token=token(old, iss=ROTATING_ISS, path=DISCOVERY,
                                                          now=clock.now)).status_code == 401


class _SlowJwks:
    """A loopback JWK Set endpoint whose answers can be delayed; counts requests; signals each arrival."""

    def __init__(self, body: dict[str, Any]) -> None:
        import http.server

        self.body = json.dumps(body).encode()
        self.delay = 0.0
        self.requests = 0
        self.arrived = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                outer.arrived.set()
                time.sleep(outer.delay)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow_jwks() -> Iterator[_SlowJwks]:
    server = _SlowJwks(jwks(ec_key("rot-1")))
    yield server
    server.close()


def _timed_verify(authenticator: Authenticator, authorization: str) -> tuple[str, float]:
    started = time.perf_counter()
    try:
        authenticator.verify(authorization, BASE + DISCOVERY)
        outcome = "ok"
    except Exception as exc:  # Unauthorized
        outcome = getattr(exc, "reason", type(exc).__name__)
    return outcome, time.perf_counter() - started


def test_a_slow_jwks_refresh_never_blocks_requests_whose_key_is_cached(tmp_path: Path,
                                                                       slow_jwks: _SlowJwks) -> None:
    """The red-team run (``--threads 8``): 4 valid requests waited 2.7 s behind one slow refresh under the
    refresh lock. Now the lock is never held during a fetch: cached keys answer at once, one refresh per client
    is in flight, and a second unknown kid during it fails fast instead of holding a thread."""
    path = write_trusted_clients(tmp_path / "t.json", [{"iss": ROTATING_ISS, "jwks_url": slow_jwks.url}])
    clock = Clock()
    authenticator = Authenticator(make_settings(auth="jwt", trusted_clients=path, public_base_url=BASE), clock=clock)
    key = ec_key("rot-1")

    def valid() -> str:
        return "Bearer " + token(key, iss=ROTATING_ISS, path=DISCOVERY, now=clock.now)

    assert _timed_verify(authenticator, valid())[0] == "ok"  # first use: fetched (fast)
    assert slow_jwks.requests == 1
    slow_jwks.delay, clock.now = 2.0, clock.now + 61
    slow_jwks.arrived.clear()
    results: dict[str, tuple[str, float]] = {}

    def run(name: str, authorization: str) -> None:
        results[name] = _timed_verify(authenticator, authorization)

    refresher = threading.Thread(target=run, args=("refresh", "Bearer " + token(
        ec_key("random-kid"), iss=ROTATING_ISS, path=DISCOVERY, now=clock.now)))
    refresher.start()
    assert slow_jwks.arrived.wait(5)  # the refresh is now in flight
    threads = [threading.Thread(target=run, args=(f"valid-{i}", valid())) for i in range(4)]
    threads.append(threading.Thread(target=run, args=("second-unknown", "Bearer " + token(
        ec_key("random-2"), iss=ROTATING_ISS, path=DISCOVERY, now=clock.now))))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    refresher.join(10)
    for i in range(4):
        outcome, seconds = results[f"valid-{i}"]
        assert outcome == "ok" and seconds < 0.5, results  # was 2.7 s behind the lock
    assert results["second-unknown"][0].startswith("unknown kid") and results["second-unknown"][1] < 0.5
    assert results["refresh"][0].startswith("unknown kid") and results["refresh"][1] >= 1.9
    assert slow_jwks.requests == 2  # one refresh in flight per client


def test_on_a_cold_start_concurrent_requests_share_one_fetch(tmp_path: Path, slow_jwks: _SlowJwks) -> None:
    path = write_trusted_clients(tmp_path / "t.json", [{"iss": ROTATING_ISS, "jwks_url": slow_jwks.url}])
    authenticator = Authenticator(make_settings(auth="jwt", trusted_clients=path, public_base_url=BASE),
                                  clock=Clock())
    slow_jwks.delay = 0.5
    results: dict[int, tuple[str, float]] = {}
    tokens = ["Bearer " + token(ec_key("rot-1"), iss=ROTATING_ISS, path=DISCOVERY) for _ in range(4)]

    def run(i: int) -> None:
        results[i] = _timed_verify(authenticator, tokens[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert [results[i][0] for i in range(4)] == ["ok"] * 4, results
    assert slow_jwks.requests == 1


# --- the reference sandbox's captured tokens ----------------------------------------------------------

SANDBOX_FILES = ["sandbox-discovery-get-http.json", "sandbox-order-sign-http.json",
                 "sandbox-order-select-http.json", "sandbox-patient-view-http.json"]


@pytest.mark.parametrize("name", SANDBOX_FILES)
@pytest.mark.parametrize("entry", ["static-jwks", "static-jwks-and-jku-url"])
def test_sandbox_tokens_verify_with_its_published_key(tmp_path: Path, name: str, entry: str) -> None:
    recorded = dataset_json(f"sandbox-requests/{name}")
    payload = recorded["jwt_payload"]
    client_entry = sandbox_entry() | ({"jwks_url": SANDBOX_JKU} if entry == "static-jwks-and-jku-url" else {})
    path = write_trusted_clients(tmp_path / "trusted.json", [client_entry])
    settings = make_settings(auth="jwt", trusted_clients=path, public_base_url="http://127.0.0.1:8082")
    authenticator = Authenticator(settings, clock=lambda: float(payload["iat"]))
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        claims = authenticator.verify(recorded["headers"]["Authorization"], payload["aud"])
        assert len(rsps.calls) == 0  # the key is configured: the jku URL is not fetched
    assert claims == payload
    # once is enough: the same token again is a replay; a day later it is expired
    with pytest.raises(Exception, match="unauthorized"):
        authenticator.verify(recorded["headers"]["Authorization"], payload["aud"])
    later = Authenticator(settings, clock=lambda: float(payload["exp"]) + 31)
    with pytest.raises(Exception, match="unauthorized") as excinfo:
        later.verify(recorded["headers"]["Authorization"], payload["aud"])
    assert excinfo.value.reason == "token expired"  # type: ignore[attr-defined]


def test_sandbox_tokens_carry_its_jku_which_must_be_listed(tmp_path: Path) -> None:
    """The recorded sandbox headers: ES384, its kid, jku https://sandbox.cds-hooks.org/.well-known/jwks.json,
    iss https://sandbox.cds-hooks.org. Without the ``jku`` member the entry refuses them; with it they verify
    and the jku URL is never fetched."""
    for name in SANDBOX_FILES:
        recorded = dataset_json(f"sandbox-requests/{name}")
        assert recorded["jwt_header"] == {"alg": "ES384", "typ": "JWT", "kid": "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f",
                                          "jku": SANDBOX_JKU}
        assert recorded["jwt_payload"]["iss"] == "https://sandbox.cds-hooks.org"
    recorded = dataset_json("sandbox-requests/sandbox-order-sign-http.json")
    payload = recorded["jwt_payload"]
    without = sandbox_entry()
    del without["jku"]
    path = write_trusted_clients(tmp_path / "trusted.json", [without])
    settings = make_settings(auth="jwt", trusted_clients=path, public_base_url="http://127.0.0.1:8082")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        with pytest.raises(Exception, match="unauthorized") as excinfo:
            Authenticator(settings, clock=lambda: float(payload["iat"])).verify(
                recorded["headers"]["Authorization"], payload["aud"])
        assert len(rsps.calls) == 0
    assert excinfo.value.reason == "jku header sent, but this client lists no jku"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("name", "body_file", "expected"), [
    ("sandbox-discovery-get-http.json", None, 200),
    ("sandbox-order-sign-http.json", "sandbox-order-sign-request.json", 200),
    ("sandbox-order-select-http.json", "sandbox-order-select-request.json", 200),
    ("sandbox-patient-view-http.json", "sandbox-patient-view-request.json", 200),
])
def test_sandbox_requests_replayed_through_the_app(build: Callable[..., Flask], name: str, body_file: str | None,
                                                   expected: int) -> None:
    recorded = dataset_json(f"sandbox-requests/{name}")
    payload = recorded["jwt_payload"]
    service_id = recorded["path"].removeprefix("/cds-services").strip("/") or "nms-order-sign"
    body = dataset_json(f"sandbox-requests/{body_file}") if body_file else None
    setting = {"patient-view": "patient_view_service_id", "order-select": "order_select_service_id"}.get(
        (body or {}).get("hook", ""), "service_id")  # the recorded call's id, served by the hook it called
    app = build([sandbox_entry()], clock=Clock(float(payload["iat"])), public_base_url="http://127.0.0.1:8082",
                cors_origins=[recorded["headers"]["Origin"]], **{setting: service_id})
    with responses.RequestsMock(assert_all_requests_are_fired=False) as fhir:
        fhir.get(re.compile(r"http://127\.0\.0\.1:8081/Patient/[^?]+$"),
                 json={"resourceType": "Patient", "id": "473970be-68e3-7d37-e777-b0d9cc2a576f"})
        fhir.get(re.compile(r"http://127\.0\.0\.1:8081/\w+\?.*"), json=EMPTY_BUNDLE)
        resp = app.test_client().open(recorded["path"], method=recorded["method"], json=body,
                                      headers=recorded["headers"])
    assert resp.status_code == expected, resp.get_json()
    assert resp.headers["Access-Control-Allow-Origin"] == recorded["headers"]["Origin"]
    if body is not None:
        assert response_problems(resp.get_json()) == []


# --- CORS ------------------------------------------------------------------------------------------------


def test_cors_production_echoes_only_allowlisted_origins(client: FlaskClient) -> None:
    ok = send(client, "GET", DISCOVERY, jwt_token=token(path=DISCOVERY), headers={"Origin": "https://ehr.example.org"})
    assert ok.status_code == 200
    assert ok.headers["Access-Control-Allow-Origin"] == "https://ehr.example.org"
    assert "Origin" in ok.headers.get("Vary", "")
    other = send(client, "GET", DISCOVERY, jwt_token=token(path=DISCOVERY), headers={"Origin": "https://evil.example"})
    assert other.status_code == 200  # CORS is enforced by the browser; the server just does not allow it
    assert "Access-Control-Allow-Origin" not in other.headers
    refused = send(client, "GET", DISCOVERY, headers={"Origin": "https://ehr.example.org"})
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == "https://ehr.example.org"  # the browser can read the 401


def test_cors_development_is_wildcard(build: Callable[..., Flask]) -> None:
    client = build(environment="development", cors_origins=[]).test_client()
    resp = send(client, "GET", DISCOVERY, jwt_token=token(path=DISCOVERY), headers={"Origin": "http://localhost:3000"})
    assert resp.headers["Access-Control-Allow-Origin"] == "*"


def test_cors_wildcard_is_refused_in_production() -> None:
    with pytest.raises(ValidationError, match="development only"):
        make_settings(environment="production", cors_origins=["*"])
    assert make_settings(environment="production", cors_origins="https://a.example/, https://b.example"
                         ).cors_origins == ["https://a.example", "https://b.example"]


@pytest.mark.parametrize(("path", "method", "requested"), [
    (DISCOVERY, "GET", "authorization"),
    (SERVICE, "POST", "authorization,content-type"),
    (FEEDBACK, "POST", "authorization,content-type"),
])
def test_preflight_needs_no_token(client: FlaskClient, caplog: pytest.LogCaptureFixture, path: str, method: str,
                                  requested: str) -> None:
    resp = client.options(path, headers={"Origin": "https://ehr.example.org", "Access-Control-Request-Method": method,
                                         "Access-Control-Request-Headers": requested})
    assert resp.status_code in (200, 204)
    assert resp.headers["Access-Control-Allow-Origin"] == "https://ehr.example.org"
    allowed = [h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")]
    assert "authorization" in allowed and "content-type" in allowed
    assert method in resp.headers["Access-Control-Allow-Methods"]
    assert not auth_failures(caplog)


# --- start-up: trusted clients file, auth=off ---------------------------------------------------------

PRIVATE_D = "SeFXUXda8UomZ8GFUl7HH_Oi15rIbfMcsWj9ecIsDR8kLbqsEz2CGNgwy_IcILxy"


@pytest.mark.parametrize(("content", "fragment"), [
    (None, "does not exist"),
    ("{not json", "not valid JSON"),
    ('{"iss": "x"}', "JSON array"),
    ("[]", "lists no clients"),
    ('[{"jwks": {"keys": []}}]', "no 'iss'"),
    ('[{"iss": "https://a.example"}]', "needs 'jwks'"),
    ('[{"iss": "https://a.example", "jwks_url": "http://keys.example/jwks.json"}]', "https"),
    ('[{"iss": "https://a.example", "jwks": {"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}}]',
     "private or symmetric"),
    ("PRIVATE", "private or symmetric"),
    ('[{"iss": "https://a.example", "jwks": {"keys": [{"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}]}}]',
     "no 'kid'"),
    ('[{"iss": "https://a.example", "jwks": {"keys": [{"kty": "EC", "kid": "k", "crv": "P-384", "x": "AA", '
     '"y": "AA"}]}}]', "not a valid EC public key"),
    ('[{"iss": "https://a.example", "jwks": {"keys": [{"kty": "EC", "kid": "k", "crv": "P-521", "x": "AA", '
     '"y": "AA"}]}}]', "unsupported curve"),
    ("DUPLICATE", "repeats an issuer"),
    ('[{"iss": "https://a.example", "jwks_url": "https://k.example/j", "tenant": 7}]', "'tenant'"),
    ('[{"iss": "https://a.example", "jwks_url": "https://k.example/j", "keys": {}}]', "unknown member"),
    ('[{"iss": "https://a.example", "jwks_url": "https://k.example/j", "jku": "http://k.example/j"}]',
     "'jku' must use"),
    ('[{"iss": "https://a.example", "jwks_url": "https://k.example/j", "jku": []}]', "'jku' must be a URL or"),
    ('[{"iss": "https://a.example", "jwks_url": "https://k.example/j", "jku": ["https://u:p@k.example/"]}]',
     "credentials"),
], ids=["missing", "bad-json", "not-array", "empty", "no-iss", "no-keys", "http-jwks-url", "oct-key",
        "private-key", "no-kid", "bad-point", "p521", "duplicate-iss", "tenant-not-string", "unknown-member",
        "jku-http", "jku-empty", "jku-credentials"])
def test_create_app_fails_fast_on_a_bad_trusted_clients_file(tmp_path: Path, content: str | None,
                                                             fragment: str) -> None:
    path = tmp_path / "trusted.json"
    if content == "PRIVATE":
        content = json.dumps([{"iss": SPEC_ISS, "jwks": {"keys": [dataset_json(
            "cds-hooks-spec-examples/cds-hooks--index--block27-fragment.json")]}}])
    elif content == "DUPLICATE":
        content = json.dumps([{"iss": ISS, "jwks_url": JWKS_URL}, {"iss": ISS, "jwks_url": JWKS_URL}])
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(TrustedClientsError) as excinfo:
        create_app(make_settings(auth="jwt", trusted_clients=path))
    message = str(excinfo.value)
    assert fragment in message
    assert str(path) in message
    assert PRIVATE_D not in message and "c2VjcmV0" not in message


def test_create_app_fails_fast_without_a_trusted_clients_setting() -> None:
    with pytest.raises(TrustedClientsError, match="NMS_CDS_TRUSTED_CLIENTS"):
        create_app(make_settings(auth="jwt", trusted_clients=None))


def test_short_rsa_keys_are_refused(tmp_path: Path) -> None:
    path = write_trusted_clients(tmp_path / "t.json", [{"iss": ISS, "jwks": jwks(rsa_key("weak", "RS384", 1024))}])
    with pytest.raises(TrustedClientsError, match="shorter than 2048"):
        create_app(make_settings(auth="jwt", trusted_clients=path))


def test_auth_off_logs_a_warning_at_start(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(make_settings(auth="off"))
    app.extensions["nms_cds"].close()
    assert any(r.levelno == logging.WARNING and getattr(r, "event", None) == "auth-off" for r in caplog.records)


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    started: list[str] = []
    import gunicorn.app.base

    monkeypatch.setattr(gunicorn.app.base.BaseApplication, "run", lambda self: started.append("run"))
    for name in ("NMS_CDS_AUTH_OFF_FORCE", "NMS_CDS_TRUSTED_CLIENTS", "NMS_CDS_ENVIRONMENT", "NMS_CDS_CORS_ORIGINS"):
        monkeypatch.delenv(name, raising=False)
    return started


def test_serve_refuses_auth_off_on_a_public_interface(monkeypatch: pytest.MonkeyPatch, no_server: list[str],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NMS_CDS_AUTH", "off")
    assert cli.main(["serve", "--host", "0.0.0.0"]) == 2
    assert no_server == []
    assert "NMS_CDS_AUTH=off" in capsys.readouterr().err


def test_serve_refuses_jwt_mode_without_trusted_clients(monkeypatch: pytest.MonkeyPatch, no_server: list[str],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NMS_CDS_AUTH", "jwt")
    assert cli.main(["serve", "--host", "0.0.0.0"]) == 2
    assert no_server == []
    assert "NMS_CDS_TRUSTED_CLIENTS" in capsys.readouterr().err


def test_serve_with_auth_off_on_loopback_is_allowed(monkeypatch: pytest.MonkeyPatch, no_server: list[str]) -> None:
    monkeypatch.setenv("NMS_CDS_AUTH", "off")
    if nginx_binary() is None:  # not about the front: where nginx is not installed, serve without one
        monkeypatch.setenv("NMS_CDS_FRONT", "none")
    assert cli.main(["serve", "--host", "127.0.0.1"]) == 0
    assert no_server == ["run"]


# --- replay cache -----------------------------------------------------------------------------------------


def test_replay_cache_forgets_expired_entries_and_is_bounded() -> None:
    cache = ReplayCache(capacity=3)
    assert cache.add(("i", "a"), until=100, now=0) is None
    assert cache.add(("i", "a"), until=100, now=50) == "replay"
    assert cache.add(("j", "a"), until=100, now=50) is None  # keyed by (iss, jti)
    assert cache.add(("i", "b"), until=200, now=50) is None
    assert cache.add(("i", "c"), until=200, now=60) == "full"  # fails closed
    assert cache.add(("i", "c"), until=300, now=101) is None  # the two until=100 entries were evicted
    assert len(cache) == 2
    assert cache.add(("i", "a"), until=400, now=150) is None  # a forgotten jti belongs to an expired token


def test_replay_cache_is_thread_safe() -> None:
    cache = ReplayCache()
    results: list[str | None] = []
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        results.append(cache.add(("iss", "same-jti"), until=100, now=0))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(None) == 1 and results.count("replay") == 15


def test_plain_http_public_base_url_is_warned_about_in_production(build: Callable[..., Flask],
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    build(public_base_url="http://cds.example.org")
    assert any(getattr(r, "event", None) == "config-warning" and "https" in r.getMessage() for r in caplog.records)
