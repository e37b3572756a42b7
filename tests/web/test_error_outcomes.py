"""Every non-200 answer of the service is a FHIR R4 OperationOutcome (CDS Hooks 3.0 ballot, "Error handling").

The test provokes every error status the application can give (400, 401, 404, 405, 412, 413, 500, 503 on
the routes that give them) and validates each body with ``fhir.resources.R4B``; the front's own error pages
(400, 408, 413, 429, 503 in the nginx configuration) and gunicorn's (400, 500) are validated as written. The
service has no 415: it reads any body as JSON whatever its Content-Type (a non-JSON body is a 400).
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cds_service.errors import ServiceOverrun, StoreUnavailable
from cds_service.protocol.outcome import ISSUE_TYPE_BY_STATUS, issue_type, operation_outcome
from cds_service.serve import front, gunicorn
from tests.conftest import app_for, make_settings
from tests.helpers.jwt_helpers import ec_key, jwks, make_token, write_trusted_clients
from tests.helpers.outcome import valid_outcome
from tests.protocol.test_protocol import febrile_prefetch, hook_request

SERVICE = "/cds-services/nms-order-sign"
FEEDBACK = SERVICE + "/feedback"
# FHIR R4 IssueType (http://hl7.org/fhir/R4/valueset-issue-type.html): every code an issue may carry
ISSUE_TYPES = {"invalid", "structure", "required", "value", "invariant", "security", "login", "unknown", "expired",
               "forbidden", "suppressed", "processing", "not-supported", "duplicate", "multiple-matches",
               "not-found", "deleted", "too-long", "code-invalid", "extension", "too-costly", "business-rule",
               "conflict", "transient", "lock-error", "no-store", "exception", "timeout", "incomplete", "throttled",
               "informational"}


def check(body: Any, label: str) -> None:
    outcome = valid_outcome(body)
    assert outcome.issue, label
    for issue in body["issue"]:
        assert issue["severity"] in {"fatal", "error", "warning", "information"}, label
        assert issue["code"] in ISSUE_TYPES, (label, issue["code"])
        assert isinstance(issue.get("diagnostics"), str) and issue["diagnostics"].strip(), label


def _fail(exc: Exception) -> Callable[..., Any]:
    def raise_it(*args: Any, **kwargs: Any) -> Any:
        raise exc
    return raise_it


def test_every_error_answer_of_the_application_is_an_operation_outcome(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[int, int] = {}

    def record(response: Any, label: str, status: int) -> None:
        assert response.status_code == status, (label, response.status_code, response.get_data(as_text=True))
        assert response.mimetype == "application/json", label
        check(response.get_json(), label)
        seen[status] = seen.get(status, 0) + 1

    with app_for(make_settings(max_body_bytes=4096, feedback_max_items=2)) as app:
        client = app.test_client()
        record(client.post(SERVICE, data=b"{not json", content_type="application/json"), "not JSON", 400)
        record(client.post(SERVICE, data=b"\xff\xfe", content_type="text/plain"), "not UTF-8, any type", 400)
        record(client.post(SERVICE, json=hook_request(hook="patient-view")), "wrong hook", 400)
        record(client.post(SERVICE, json={**hook_request(), "extension": "x"}), "bad extension", 400)
        record(client.post(FEEDBACK, json={"feedback": [{"card": "x"}]}), "bad feedback", 400)
        record(client.post("/cds-services/no-such-service", json=hook_request()), "unknown service", 404)
        record(client.get("/no-such-route"), "unknown route", 404)
        record(client.post("/cds-services/no-such/feedback", json={"feedback": []}), "unknown feedback", 404)
        record(client.get(SERVICE), "GET on a service", 405)
        record(client.delete("/cds-services"), "DELETE on discovery", 405)
        record(client.put("/healthz"), "PUT on healthz", 405)
        record(client.post(SERVICE, json=hook_request(prefetch={})), "no data", 412)
        record(client.post(SERVICE, data=b"{" + b" " * 5000 + b"}", content_type="application/json"), "big", 413)
        item = {"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-11-24T12:00:00Z"}
        record(client.post(FEEDBACK, json={"feedback": [item] * 3}), "too many feedback items", 413)
        rt = app.extensions["nms_cds"]
        monkeypatch.setattr(rt.store, "add_feedback", _fail(StoreUnavailable("database is locked")))
        record(client.post(FEEDBACK, json={"feedback": [item]}), "store down", 503)
        monkeypatch.setattr(rt.store, "ping", _fail(StoreUnavailable("database is locked")))
        record(client.get("/readyz"), "not ready", 503)
        service = rt.services["nms-order-sign"]
        monkeypatch.setattr(service, "call", _fail(ServiceOverrun()))
        record(client.post(SERVICE, json=hook_request(prefetch=febrile_prefetch())), "overrun", 503)
        monkeypatch.setattr(service, "call", _fail(RuntimeError("boom")))
        record(client.post(SERVICE, json=hook_request(prefetch=febrile_prefetch())), "unexpected", 500)

    key = ec_key("outcome-key")
    path = write_trusted_clients(tmp_path / "clients.json", [{"iss": "https://ehr.example.org", "jwks": jwks(key)}])
    settings = make_settings(auth="jwt", environment="production", trusted_clients=path,
                             metrics_token="a-scrape-token-of-32-characters!")
    with app_for(settings) as app:
        client = app.test_client()
        record(client.get("/cds-services"), "no token on discovery", 401)
        record(client.post(SERVICE, json=hook_request()), "no token on a service", 401)
        record(client.post(FEEDBACK, json={"feedback": []}), "no token on feedback", 401)
        wrong_aud = make_token(key, iss="https://ehr.example.org", aud="https://elsewhere.example.org",
                               now=time.time())
        record(client.get("/cds-services", headers={"Authorization": f"Bearer {wrong_aud}"}), "wrong aud", 401)
        record(client.get("/metrics", headers={"Authorization": "Bearer wrong"}), "wrong scrape token", 401)
    with app_for(make_settings(environment="production", auth="off", auth_off_force=True)) as app:
        record(app.test_client().get("/metrics"), "metrics off", 404)

    assert set(seen) == {400, 401, 404, 405, 412, 413, 500, 503}, seen


def test_the_fronts_own_error_pages_are_operation_outcomes() -> None:
    conf = front._error_pages(4096)
    bodies = {int(status): json.loads(text.replace("\\'", "'"))
              for status, text in re.findall(r"return (\d{3}) '(.*)';", conf)}
    assert {400, 401, 405, 408, 413, 429, 502, 503, 504} <= set(bodies)
    for status, body in bodies.items():
        check(body, f"front {status}")
        if status in ISSUE_TYPE_BY_STATUS:
            assert body["issue"][0]["code"] == issue_type(status)  # the same code as the service's


@pytest.mark.parametrize("status", [400, 500])
def test_gunicorns_own_error_answers_are_operation_outcomes(status: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from gunicorn import util

    monkeypatch.setattr(util, "write_error", util.write_error)  # restored after the test
    gunicorn.json_gunicorn_errors()
    left, right = socket.socketpair()
    with left, right:
        util.write_error(left, status, "Reason", "detail never shown")
        left.shutdown(socket.SHUT_WR)
        raw = b""
        while chunk := right.recv(65536):
            raw += chunk
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(f"HTTP/1.1 {status} ".encode()) and b"Content-Type: application/json" in head
    check(json.loads(body), f"gunicorn {status}")
    assert b"detail never shown" not in body


@pytest.mark.parametrize("status", sorted(ISSUE_TYPE_BY_STATUS))
def test_every_mapped_status_gives_a_valid_outcome(status: int) -> None:
    body = operation_outcome(status, "a problem", expression="context.patientId")
    check(body, str(status))
    assert body["issue"][0]["expression"] == ["context.patientId"]


def test_unmatched_statuses_fall_back_to_invalid_or_exception() -> None:
    assert operation_outcome(418, "x")["issue"][0]["code"] == "invalid"
    assert operation_outcome(599, "x")["issue"][0]["code"] == "exception"

