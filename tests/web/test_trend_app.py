"""The trend view's routes under /app/: static files with a self-only Content-Security-Policy, the launch
settings, and the assessment API (the patient-view engine over the local FHIR server: one source of truth)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from flask import Flask

from cds_service.devtools import fixtures, localfhir
from cds_service.devtools.tools import load_fixtures
from tests.conftest import app_for, make_settings, require_local_fhir

URL = "/app/api/assessment"


def test_pages_and_scripts_are_served_with_a_self_only_policy(client: object) -> None:
    for path, kind in (("/app/launch.html", "text/html"), ("/app/index.html", "text/html"), ("/app/", "text/html"),
                       ("/app/view.js", "text/javascript"), ("/app/launch.js", "text/javascript"),
                       ("/app/view.css", "text/css"), ("/app/vendor/fhir-client.pure.min.js", "text/javascript"),
                       ("/app/vendor/uPlot.iife.min.js", "text/javascript")):
        response = client.get(path)  # type: ignore[attr-defined]
        assert response.status_code == 200, path
        assert response.mimetype == kind
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self';" in csp and "style-src 'self';" in csp and "default-src 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/app/../config.py", "/app/vendor/VENDORED.md", "/app/nothing.js", "/app/vendor/uplot.LICENSE",
                 "/app/%2e%2e/app.py"):
        assert client.get(path).status_code == 404, path  # type: ignore[attr-defined]


def test_pages_have_no_inline_script_or_style() -> None:
    from cds_service.web.trend_app import STATIC

    for name in ("launch.html", "index.html"):
        html = STATIC.joinpath(name).read_text(encoding="utf-8")
        assert "<script>" not in html and "<style" not in html and " style=" not in html and "onclick" not in html
        assert html.count("<script src=") >= 2


def test_connect_src_names_the_allowed_fhir_and_authorization_servers() -> None:
    settings = make_settings(fhir_allowlist=["https://fhir.example.org/r4"],
                             smart_auth_origins="https://auth.example.org, http://127.0.0.1:9")
    with app_for(settings) as app:
        csp = app.test_client().get("/app/launch.html").headers["Content-Security-Policy"]
    assert "connect-src 'self' https://fhir.example.org https://auth.example.org http://127.0.0.1:9;" in csp


def test_an_open_server_outside_the_allowlist_is_never_read() -> None:
    settings = make_settings(fhir_allowlist=["https://fhir.example.org/r4", "http://127.0.0.1:8081"],
                             smart_open_fhir_server="http://127.0.0.1:9999/fhir")
    with app_for(settings) as app:
        response = app.test_client().post(URL, json={"fhirServer": "http://127.0.0.1:8081/fhir", "patient": "p1"})
        assert response.status_code == 401
        response = app.test_client().post(URL, json={"fhirServer": "http://127.0.0.1:9999/fhir", "patient": "p1"})
        assert response.status_code == 400


def test_launch_settings() -> None:
    with app_for(make_settings(smart_client_id="ehr-registered", smart_open_fhir_server="http://127.0.0.1:8081/fhir")
                 ) as app:
        config = app.test_client().get("/app/api/config").get_json()
    assert config["clientId"] == "ehr-registered"
    assert "launch" in config["scope"].split() and "patient/Observation.rs" in config["scope"].split()
    assert config["openFhirServer"] == "http://127.0.0.1:8081/fhir"


def test_open_fhir_server_is_refused_in_production() -> None:
    with pytest.raises(ValueError, match="development only"):
        make_settings(environment="production", smart_open_fhir_server="http://127.0.0.1:8081/fhir")
    with pytest.raises(ValueError, match="is not an origin"):
        make_settings(smart_auth_origins="https://auth.example.org/oauth")


@pytest.mark.parametrize(("body", "status"), [
    ([], 400),
    ({"patient": "p1"}, 400),
    ({"fhirServer": "http://127.0.0.1:8081/fhir", "patient": "../x"}, 400),
    ({"fhirServer": "https://elsewhere.example/fhir", "patient": "p1"}, 400),
    ({"fhirServer": "http://127.0.0.1:8081/fhir?x=1", "patient": "p1"}, 400),
])
def test_bad_requests_are_refused(client: object, body: object, status: int) -> None:
    response = client.post(URL, json=body)  # type: ignore[attr-defined]
    assert response.status_code == status
    assert "elsewhere" not in response.get_data(as_text=True)


def test_without_a_token_only_the_development_open_server_is_read() -> None:
    # production, or development without the open server: the SMART token is required before any FHIR read
    for settings in (make_settings(environment="production"), make_settings()):
        with app_for(settings) as app:
            response = app.test_client().post(URL, json={"fhirServer": "http://127.0.0.1:8081/fhir",
                                                         "patient": "p1"})
        assert response.status_code == 401
    with app_for(make_settings()) as app:
        response = app.test_client().post(URL, json={"fhirServer": "http://127.0.0.1:8081/fhir", "patient": "p1"},
                                          headers={"Authorization": "Basic abc"})
    assert response.status_code == 401


# --- against the local FHIR server ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server() -> Iterator[localfhir.LocalFhirServer]:
    require_local_fhir()
    with localfhir.LocalFhirServer(port=0) as srv:
        assert load_fixtures(srv.base_url, None, None, rebase=False) == 0
        yield srv


@pytest.fixture
def fhir_app(server: localfhir.LocalFhirServer) -> Iterator[Flask]:
    with app_for(make_settings(fixed_now=fixtures.ANCHOR, fhir_allowlist=[server.base_url],
                               smart_open_fhir_server=server.base_url)) as application:
        yield application


@pytest.mark.integration
def test_classic_nms_course_with_every_series_and_threshold(fhir_app: Flask, server: localfhir.LocalFhirServer,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        response = fhir_app.test_client().post(URL, json={"fhirServer": server.base_url, "patient": "nms-classic-nms"},
                                               headers={"Authorization": "Bearer secret-token-never-logged"})
    assert response.status_code == 200, response.get_data(as_text=True)
    view = response.get_json()
    assert view["indicator"] == "critical" and view["onset_kind"] == "fever"
    charts = {c["id"]: c for c in view["charts"]}
    assert list(charts) == ["temperature", "heart-rate", "blood-pressure", "ck", "iron", "wbc", "crp"]
    for chart in charts.values():
        assert all(s["points"] for s in chart["series"]), chart["id"]
        assert chart["thresholds"], chart["id"]
    assert max(p["v"] for p in charts["temperature"]["series"][0]["points"]) == 39.4
    assert max(p["v"] for p in charts["ck"]["series"][0]["points"]) == 9400
    assert charts["ck"]["thresholds"][0]["value"] == 800  # 4 x the lab's ULN of 200 U/L
    assert charts["heart-rate"]["thresholds"][0]["value"] == 100  # baseline 80 + 25 %
    assert [c["name"] for c in view["criteria"] if c["met"]] == ["exposure", "hyperthermia", "ck", "autonomic",
                                                                  "hypermetabolism"]
    assert {e["ingredient"] for e in view["exposures"]} == {"haloperidol"}
    assert all(e["role"] == "antagonist" and e["start"] for e in view["exposures"])
    assert view["other_causes"] and all("label" in c for c in view["other_causes"])
    assert view["window"]["end"].startswith("2026-11-24T12:00")
    assert "secret-token-never-logged" not in caplog.text


@pytest.mark.integration
def test_a_missing_series_is_empty_and_the_open_server_needs_no_token(fhir_app: Flask,
                                                                      server: localfhir.LocalFhirServer) -> None:
    response = fhir_app.test_client().post(URL, json={"fhirServer": server.base_url,
                                                      "patient": "nms-hyperthermia-without-ck"})
    assert response.status_code == 200, response.get_data(as_text=True)
    charts = {c["id"]: c for c in response.get_json()["charts"]}
    assert charts["ck"]["series"][0]["points"] == []
    assert charts["temperature"]["series"][0]["points"]


@pytest.mark.integration
def test_an_unknown_patient_is_a_clear_precondition_failure(fhir_app: Flask, server: localfhir.LocalFhirServer
                                                            ) -> None:
    response = fhir_app.test_client().post(URL, json={"fhirServer": server.base_url, "patient": "nobody-here"})
    assert response.status_code in (200, 412)
