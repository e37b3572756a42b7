"""Which FHIR servers the service contacts: the allowlist, look-alike hosts, paths off the base, redirects, http."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import FHIR_BASE
from tests.helpers import security
from tests.helpers.security import (
    ACCESS_TOKEN,
    EMPTY_BUNDLE,
    SERVICE,
    hook_body,
    logged_text,
    send,
    token,
)

# the shared fixtures: a JWT-mode app factory, its app and client, recorded outbound calls, debug logs
_debug_logs, app, build, client, outbound = (security._debug_logs, security.app, security.build, security.client,
                                             security.outbound)


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
