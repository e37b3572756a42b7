"""``/metrics`` (Prometheus, official client), ``/readyz``, access lines and CORS/discovery logging.

In-process through the Flask test client (one process: the default registry), and once against a real
``nms-cds serve`` with two workers (multiprocess mode: the counts of both workers add up)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from cds_service import metrics
from cds_service.app import create_app
from cds_service.devtools import fixtures
from tests.conftest import FHIR_BASE, make_settings
from tests.helpers.jwt_helpers import ec_key, jwks, write_trusted_clients
from tests.helpers.outcome import UNAUTHORIZED, issue, valid_outcome

TOKEN = "scrape-token-0123456789"
HOOK = "/cds-services/nms-order-sign"


def sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def scrape(client: FlaskClient) -> str:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Type"].startswith("text/plain")
    return response.get_data(as_text=True)


@pytest.fixture
def app() -> Any:
    application = create_app(make_settings(environment="production", metrics_token=TOKEN))
    yield application
    application.extensions["nms_cds"].close()


def classic_request(**changes: Any) -> dict[str, Any]:
    request = json.loads(json.dumps(fixtures.load_scenario("classic-nms").request))
    request.update(changes)
    return request


# --- access protection ------------------------------------------------------------------------------------

def test_metrics_need_the_scrape_token_in_production(client: FlaskClient) -> None:
    assert client.get("/metrics").status_code == 401
    wrong = client.get("/metrics", headers={"Authorization": "Bearer not-the-token-at-all"})
    assert wrong.status_code == 401 and wrong.get_json() == UNAUTHORIZED
    assert TOKEN not in wrong.get_data(as_text=True)
    assert "nms_cds_http_requests_total" in scrape(client)


def test_metrics_are_off_without_a_token_in_production_and_open_in_development() -> None:
    for environment, status in (("production", 404), ("development", 200)):
        app = create_app(make_settings(environment=environment))
        response = app.test_client().get("/metrics")
        assert response.status_code == status
        if status == 404:
            assert "NMS_CDS_METRICS_TOKEN" in issue(response.get_json())["diagnostics"]
        app.extensions["nms_cds"].close()


def test_a_short_metrics_token_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="NMS_CDS_METRICS_TOKEN"):
        make_settings(metrics_token="short")


# --- what is counted ----------------------------------------------------------------------------------------

def test_requests_hooks_cards_by_route_status_and_indicator(client: FlaskClient) -> None:
    before = scrape(client)
    assert client.post(HOOK, json=classic_request()).status_code == 200
    assert client.get("/cds-services").status_code == 200
    assert client.post("/cds-services/nope", json={}).status_code == 404
    assert client.get("/no/such/route").status_code == 404
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("nms_cds_http_requests_total", method="POST", route="/cds-services/<service_id>",
                 status="200") == 1
    assert delta("nms_cds_http_requests_total", method="GET", route="/cds-services", status="200") == 1
    assert delta("nms_cds_http_requests_total", route="/cds-services/<service_id>", status="404") == 1
    assert delta("nms_cds_http_requests_total", route="unmatched", status="404") == 1
    assert delta("nms_cds_hook_duration_seconds_count", service="nms-order-sign", hook="order-sign") == 1
    assert delta("nms_cds_cards_total", service="nms-order-sign", hook="order-sign", indicator="critical") == 1
    assert "nope" not in after and "/no/such/route" not in after  # raw paths never become labels


@responses.activate
def test_fhir_calls_are_counted_by_outcome(client: FlaskClient) -> None:
    import re

    responses.add(responses.GET, re.compile(re.escape(FHIR_BASE) + r"/Observation.*"), status=503)
    # nothing else is registered: every other GET is refused (a connection error)
    before = scrape(client)
    request = classic_request(fhirServer=FHIR_BASE)
    request.pop("prefetch", None)
    client.post(HOOK, json=request)
    after = scrape(client)
    outcomes = {s.labels["outcome"]: s.value for f in text_string_to_metric_families(after) for s in f.samples
                if s.name == "nms_cds_fhir_requests_total"}
    old = {s.labels["outcome"]: s.value for f in text_string_to_metric_families(before) for s in f.samples
           if s.name == "nms_cds_fhir_requests_total"}
    grown = {k: v - old.get(k, 0.0) for k, v in outcomes.items() if v - old.get(k, 0.0) > 0}
    assert grown.get("http-5xx", 0) >= 1, grown  # the Observation queries
    assert grown.get("connection-error", 0) >= 1, grown  # queries responses refused
    assert set(grown) <= {"ok", "timeout", "connection-error", "not-allowed", "http-401-403", "http-404",
                          "http-5xx", "http-other", "bad-response", "fhir-error"}


def test_auth_failures_by_bounded_reason(tmp_path: Path) -> None:
    path = write_trusted_clients(tmp_path / "clients.json",
                                 [{"iss": "https://ehr.example.org", "jwks": jwks(ec_key())}])
    app = create_app(make_settings(auth="jwt", environment="production", trusted_clients=path,
                                   metrics_token=TOKEN))
    client = app.test_client()
    before = scrape(client)
    assert client.get("/cds-services").status_code == 401
    assert client.get("/cds-services", headers={"Authorization": "Bearer a.b.c"}).status_code == 401
    after = scrape(client)
    for reason in ("missing-authorization-header", "malformed-token"):
        assert sample(after, "nms_cds_auth_failures_total", reason=reason) - \
            sample(before, "nms_cds_auth_failures_total", reason=reason) == 1
    app.extensions["nms_cds"].close()


def test_reason_labels_drop_variable_parts() -> None:
    assert metrics.reason_label("unknown kid 'attacker-chosen-123'") == "unknown-kid"
    assert metrics.reason_label("algorithm not allowed: none") == "algorithm-not-allowed"
    assert metrics.reason_label("jti replayed") == "jti-replayed"
    assert len(metrics.reason_label("x" * 500)) <= 48


# --- readiness ----------------------------------------------------------------------------------------------

def test_readyz_is_ready_and_healthz_stays_liveness(client: FlaskClient) -> None:
    assert client.get("/readyz").get_json() == {"status": "ready"}
    assert client.get("/healthz").get_json() == {"status": "ok"}


class _Store:
    def __init__(self) -> None:
        self.fail = False

    def ping(self) -> None:
        if self.fail:
            raise ConnectionError("database unreachable: password=secret")


def test_readyz_follows_the_store_when_there_is_one(app: Flask, client: FlaskClient,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    store = _Store()
    monkeypatch.setattr(app.extensions["nms_cds"], "store", store)  # the real one back before the app closes
    assert client.get("/readyz").status_code == 200
    store.fail = True
    response = client.get("/readyz")
    assert response.status_code == 503
    assert [i["diagnostics"] for i in valid_outcome(response.get_json()).model_dump()["issue"]] == [
        "store not usable (ConnectionError)"]
    assert client.get("/healthz").status_code == 200  # liveness is not readiness


def test_readyz_not_ready_when_the_trusted_clients_file_is_gone(tmp_path: Path) -> None:
    path = write_trusted_clients(tmp_path / "clients.json",
                                 [{"iss": "https://ehr.example.org", "jwks": jwks(ec_key())}])
    app = create_app(make_settings(auth="jwt", environment="production", trusted_clients=path))
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    path.unlink()
    assert issue(client.get("/readyz").get_json())["diagnostics"] == "trusted clients file is not readable"
    app.extensions["nms_cds"].close()


# --- access lines, CORS and discovery logging -------------------------------------------------------------

def test_one_access_line_per_request(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cds_service")
    client.post(HOOK, json=classic_request(), headers={"X-Request-Id": "req-42"})
    client.get("/cds-services")
    lines = [r for r in caplog.records if getattr(r, "event", None) == "access"]
    assert len(lines) == 2
    hook = lines[0]
    assert (hook.method, hook.route, hook.status, hook.request_id) == (
        "POST", "/cds-services/<service_id>", 200, "req-42")
    assert isinstance(hook.duration_ms, float) and hook.duration_ms > 0
    assert lines[1].route == "/cds-services"
    patient = classic_request()["context"]["patientId"]
    assert all(patient not in json.dumps(r.__dict__, default=str) for r in lines)


def test_cors_refusals_and_preflights_are_logged_without_request_data(
        caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(make_settings(environment="production", cors_origins=["https://ehr.example.org"]))
    client = app.test_client()
    caplog.set_level(logging.INFO, logger="cds_service")
    client.options(HOOK, headers={"Origin": "https://ehr.example.org", "Access-Control-Request-Method": "POST"})
    client.post(HOOK, json=classic_request(), headers={"Origin": "https://evil.example.com"})
    client.get("/cds-services", headers={"Origin": "javascript:alert(1)//<script>"})
    events = [(r.event, getattr(r, "origin", None)) for r in caplog.records
              if getattr(r, "event", "").startswith("cors")]
    assert events == [("cors-preflight", "https://ehr.example.org"), ("cors-refused", "https://evil.example.com"),
                      ("cors-refused", "malformed")]
    text = caplog.text + "".join(json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert "<script>" not in text
    assert classic_request()["context"]["patientId"] not in "".join(
        json.dumps(r.__dict__, default=str) for r in caplog.records if getattr(r, "event", "").startswith("cors"))
    app.extensions["nms_cds"].close()


# --- several workers ---------------------------------------------------------------------------------------

def test_metrics_add_up_across_gunicorn_workers(tmp_path: Path) -> None:
    from tests.system.test_serving import _require_nginx, serve

    _require_nginx()
    env = {"NMS_CDS_METRICS_TOKEN": TOKEN}
    with serve(tmp_path, "--workers", "2", "--app", "tests.helpers.serving_apps:spinning_app", env=env,
               ready_workers=2) as served:
        pids: list[int] = []

        def call() -> None:
            pids.append(requests.get(f"{served.base}/test/sleep", timeout=10).json()["pid"])

        threads = [threading.Thread(target=call) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        text = requests.get(f"{served.base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"},
                            timeout=10).text
    assert len(set(pids)) == 2, pids  # both workers answered
    assert sample(text, "nms_cds_http_requests_total", route="/test/sleep", status="200") == 12
    assert sample(text, "nms_cds_http_request_duration_seconds_count", route="/test/sleep") == 12
