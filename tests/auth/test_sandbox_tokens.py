"""The reference sandbox's captured tokens and requests, verified and replayed through the app."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import responses
from flask import Flask

from cds_service.auth import Authenticator
from tests.conftest import dataset_json, make_settings
from tests.helpers import security
from tests.helpers.cdshooks_check import response_problems
from tests.helpers.jwt_helpers import (
    SANDBOX_JKU,
    sandbox_entry,
    write_trusted_clients,
)
from tests.helpers.security import (
    EMPTY_BUNDLE,
    Clock,
)

# the shared fixtures: a JWT-mode app factory, its app and client, recorded outbound calls, debug logs
_debug_logs, app, build, client, outbound = (security._debug_logs, security.app, security.build, security.client,
                                             security.outbound)


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
