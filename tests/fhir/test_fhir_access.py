"""FHIR data access with ``responses``: paging, prefetch fallbacks, errors, timeouts and the allowlist."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import pytest
import requests
import responses
from flask.testing import FlaskClient
from pydantic import ValidationError

from cds_service.app import create_app
from cds_service.config import Settings
from cds_service.errors import FhirAuthError, FhirBadResponse, FhirNotAllowed, FhirTimeout
from cds_service.fhir.client import Deadline, FhirClient, check_allowed, resource_name
from cds_service.logs import JsonFormatter
from tests.conftest import FHIR_BASE, make_settings
from tests.protocol.test_protocol import URL, empty_prefetch, febrile_prefetch, hook_request

OBS = re.compile(re.escape(FHIR_BASE) + r"/Observation.*")
ANY = re.compile(re.escape(FHIR_BASE) + r"/.*")


def bundle(resources: list[dict[str, Any]], next_url: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                            "entry": [{"resource": r} for r in resources]}
    if next_url:
        body["link"] = [{"relation": "next", "url": next_url}]
    return body


def temp(i: int, value: float = 36.8) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": f"t{i}", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
            "effectiveDateTime": f"2026-11-24T{i % 10:02d}:00:00Z",
            "valueQuantity": {"value": value, "code": "Cel", "system": "http://unitsofmeasure.org"}}


def client_for(settings: Settings | None = None, token: str | None = None, budget: float = 3.0) -> FhirClient:
    settings = settings or make_settings()
    return FhirClient(FHIR_BASE, settings, Deadline(budget), token=token)


# --- the client ----------------------------------------------------------------------------------------

@responses.activate
def test_paging_follows_next_links_and_sends_the_token() -> None:
    responses.add(responses.GET, f"{FHIR_BASE}/Observation", json=bundle([temp(1)], f"{FHIR_BASE}/Observation?p=2"),
                  match=[responses.matchers.query_param_matcher({"patient": "p1"})])
    responses.add(responses.GET, f"{FHIR_BASE}/Observation", json=bundle([temp(2)], f"{FHIR_BASE}/Observation?p=3"),
                  match=[responses.matchers.query_param_matcher({"p": "2"})])
    responses.add(responses.GET, f"{FHIR_BASE}/Observation", json=bundle([temp(3)]),
                  match=[responses.matchers.query_param_matcher({"p": "3"})])
    result = client_for(token="secret-token").search("Observation?patient=p1")
    assert [r["id"] for r in result.resources] == ["t1", "t2", "t3"]
    assert result.pages == 3 and result.complete
    assert all(c.request.headers["Authorization"] == "Bearer secret-token" for c in responses.calls)


@responses.activate
def test_paging_caps_pages_resources_and_loops() -> None:
    responses.add(responses.GET, OBS, json=bundle([temp(1)], f"{FHIR_BASE}/Observation?again=1"))
    looped = client_for().search("Observation?x=1")
    assert not looped.complete and "loops" in (looped.note or "")
    responses.replace(responses.GET, OBS, json=bundle([temp(i) for i in range(30)], f"{FHIR_BASE}/Observation?n=2"))
    capped = client_for(make_settings(fhir_max_resources=40, fhir_max_pages=5)).search("Observation?x=2")
    assert len(capped.resources) == 40 and not capped.complete


@responses.activate
def test_next_link_to_another_host_is_not_followed() -> None:
    responses.add(responses.GET, OBS, json=bundle([temp(1)], "https://evil.example.net/Observation?p=2"))
    result = client_for().search("Observation?x=1")
    assert [r["id"] for r in result.resources] == ["t1"]
    assert not result.complete and "outside" in (result.note or "")
    assert len(responses.calls) == 1


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"status": 401, "json": {"resourceType": "OperationOutcome", "issue": [{"diagnostics": "expired"}]}},
         FhirAuthError),
        ({"status": 200, "body": "<html>login</html>", "content_type": "text/html"}, FhirBadResponse),
        ({"status": 200, "body": '{"resourceType": "Bundle", "entry": ['}, FhirBadResponse),
        ({"status": 200, "json": {"resourceType": "Patient", "id": "x"}}, FhirBadResponse),
        ({"body": requests.exceptions.ReadTimeout("slow")}, FhirTimeout),
        ({"status": 302, "headers": {"Location": "https://elsewhere.example.com/fhir/Observation"}},
         FhirNotAllowed),
    ],
)
@responses.activate
def test_server_failures_are_typed_errors(kwargs: dict[str, Any], error: type[Exception]) -> None:
    responses.add(responses.GET, OBS, **kwargs)
    with pytest.raises(error):
        client_for().search("Observation?patient=p1")
    assert not any("elsewhere" in (c.request.url or "") for c in responses.calls)


@responses.activate
def test_oversized_response_is_abandoned() -> None:
    responses.add(responses.GET, OBS, body=b"x" * 5000)
    with pytest.raises(FhirBadResponse, match="larger than"):
        client_for(make_settings(fhir_max_response_bytes=1024)).search("Observation?x=1")


def test_allowlist_and_scheme_rules() -> None:
    settings = make_settings(fhir_allowlist=["https://fhir.example.org/r4", "http://127.0.0.1:8081"])
    check_allowed("https://fhir.example.org/r4", settings)
    check_allowed("https://fhir.example.org/r4/Observation?x=1", settings)
    check_allowed("http://127.0.0.1:8081/fhir", settings)
    for bad in ("https://fhir.example.org/r4evil", "https://fhir.example.org.evil.com/r4",
                "http://fhir.example.org/r4", "ftp://fhir.example.org/r4", "https://user:pw@fhir.example.org/r4"):
        with pytest.raises(FhirNotAllowed):
            check_allowed(bad, settings)


# --- the allowlist: parsed, normalised, matched by components ------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    ("https://fhir.example.org/r4", ["https://fhir.example.org/r4"]),
    ("https://FHIR.Example.org:443/r4/", ["https://fhir.example.org/r4"]),  # host case, default port, slash
    ("http://127.0.0.1:80/fhir", ["http://127.0.0.1/fhir"]),
    ("https://a.example/r4,https://b.example:8443/fhir", ["https://a.example/r4", "https://b.example:8443/fhir"]),
    ("https://a.example/r4; https://b.example/fhir", ["https://a.example/r4", "https://b.example/fhir"]),
    ("https://a.example/r4  https://b.example/fhir\n", ["https://a.example/r4", "https://b.example/fhir"]),
    ('["https://a.example/r4", "https://b.example/fhir/"]', ["https://a.example/r4", "https://b.example/fhir"]),
    ("https://a.example/r4, https://A.example:443/r4/", ["https://a.example/r4"]),  # duplicates collapse
    ("https://[::1]:8443/fhir", ["https://[::1]:8443/fhir"]),
    ("https://fhir.example.org", ["https://fhir.example.org"]),
    ("http://fhir_server:8080/fhir", ["http://fhir_server:8080/fhir"]),  # a container name
], ids=["plain", "normalised", "http-default-port", "comma", "semicolon", "whitespace", "json-list", "duplicate",
        "ipv6", "origin-only", "underscore-host"])
def test_allowlist_forms_are_parsed_and_normalised(monkeypatch: pytest.MonkeyPatch, value: str,
                                                   expected: list[str]) -> None:
    monkeypatch.setenv("NMS_CDS_FHIR_ALLOWLIST", value)
    assert Settings().fhir_allowlist == expected


@pytest.mark.parametrize(("value", "fragment"), [
    ("https://", "has no host"),
    ("https:///r4", "has no host"),
    ("https://fhir.example.org/r4, https://", "has no host"),
    ("fhir.example.org/r4", "not an absolute http(s) URL"),
    ("ftp://fhir.example.org/r4", "not an absolute http(s) URL"),
    ("https://user:secret@fhir.example.org/r4", "credentials"),
    ("https://fhir.example.org/r4?x=1", "query"),
    ("https://fhir.example.org/r4#frag", "fragment"),
    ("https://fhir.example.org/r4/../admin", "path segment"),
    ("https://fhir.example.org:99999/r4", "bad host or port"),
    ('["https://a.example", 7]', "JSON list of strings"),
    ("[not json", "JSON list of strings"),
], ids=["scheme-only", "empty-host", "one-bad-of-two", "no-scheme", "ftp", "credentials", "query", "fragment",
        "dot-dot", "bad-port", "json-not-strings", "json-broken"])
def test_bad_allowlist_entries_are_one_clear_configuration_error(monkeypatch: pytest.MonkeyPatch, value: str,
                                                                 fragment: str) -> None:
    monkeypatch.setenv("NMS_CDS_FHIR_ALLOWLIST", value)
    with pytest.raises(ValidationError) as excinfo:
        Settings()
    (error,) = excinfo.value.errors()
    message = str(error["msg"])
    assert "NMS_CDS_FHIR_ALLOWLIST" in message and fragment in message
    assert "\n" not in message and "secret" not in message


@pytest.mark.parametrize(("url", "admitted"), [
    ("https://fhir.example.org/r4", True),
    ("https://FHIR.EXAMPLE.ORG/r4/Patient/1", True),
    ("https://fhir.example.org:443/r4/Observation?patient=1", True),
    ("https://fhir.example.org./r4/Patient/1", True),
    ("https://fhir.example.org/r4/", True),
    ("https://fhir.example.org/r4-evil/Patient", False),
    ("https://fhir.example.org/R4/Patient", False),  # paths are case-sensitive
    ("https://fhir.example.org:8443/r4/Patient", False),
    ("https://fhir.example.org.evil.com/r4", False),
    ("https://evil.com/fhir.example.org/r4", False),
    ("https://fhir.example.org@evil.com/r4", False),
    ("http://fhir.example.org/r4", False),
    ("https://fhir.example.org/r", False),
    ("https://fhir.example.org", False),
], ids=["base", "host-case", "default-port", "trailing-dot-host", "trailing-slash", "sibling", "path-case",
        "other-port", "suffix-host", "host-in-path", "userinfo-host", "http", "shorter-path", "origin"])
def test_allowlist_matching_is_by_components(url: str, admitted: bool) -> None:
    settings = make_settings(fhir_allowlist="https://fhir.example.org:443/r4/")
    if admitted:
        check_allowed(url, settings)
    else:
        with pytest.raises(FhirNotAllowed):
            check_allowed(url, settings)


#: ``fhirServer`` values the red-team run saw accepted and queried with the token on the allowed host, and
#: their relatives: each must be refused before any connection, with a message that does not repeat it.
HOSTILE_BASES = {
    "dot-dot": FHIR_BASE + "/../admin",
    "dot-dot-semicolon": FHIR_BASE + "/..;/admin",
    "semicolon-param": FHIR_BASE + "/Patient;jsessionid=1",
    "encoded-semicolon": FHIR_BASE + "/..%3b/admin",
    "encoded-dot-dot": FHIR_BASE + "/%2e%2e/admin",
    "mixed-dot-dot": FHIR_BASE + "/.%2E/admin",
    "double-encoded": FHIR_BASE + "/%252e%252e/admin",
    "triple-encoded": FHIR_BASE + "/%25252e%25252e/admin",
    "fullwidth-dots": FHIR_BASE + "/\uff0e\uff0e/admin",
    "fullwidth-encoded": FHIR_BASE + "/%EF%BC%8E%EF%BC%8E/admin",
    "one-dot-leader": FHIR_BASE + "/\u2025/admin",
    "ideographic-stop": FHIR_BASE + "/\u3002\u3002/admin",
    "small-full-stop": FHIR_BASE + "/\ufe52\ufe52/admin",
    "single-dot": FHIR_BASE + "/./admin",
    "triple-dot": FHIR_BASE + "/.../admin",
    "backslash": FHIR_BASE + "\\..\\admin",
    "encoded-backslash": FHIR_BASE + "/..%5cadmin",
    "encoded-slash": FHIR_BASE + "/..%2fadmin",
    "query-userinfo": FHIR_BASE + "?@collector.evil.example/",
    "empty-query": FHIR_BASE + "?",
    "fragment": FHIR_BASE + "#@collector.evil.example",
    "userinfo": "https://user:pass@fhir.example.org/r4",
    "empty-userinfo": "https://@fhir.example.org/r4",
    "empty-segment": FHIR_BASE + "//admin",
    "nul": FHIR_BASE + "/%00/admin",
    "newline": FHIR_BASE + "/\n/admin",
    "tab-in-host": "https://fhir.exa\tmple.org/r4",
    "non-ascii-path": FHIR_BASE + "/Pati\u0435nt",
    "idn-host": "https://fh\u0456r.example.org/r4",
    "bad-utf8": FHIR_BASE + "/%ff%fe/admin",
    # SSRF spellings of hosts and ports (never admitted, whatever the allowlist holds)
    "port-userinfo": "https://fhir.example.org:443@collector.evil.example/r4",
    "fragment-userinfo": "https://collector.evil.example#@fhir.example.org/r4",
    "decimal-ip": "http://2130706433:8081/fhir",
    "short-ip": "http://127.1:8081/fhir",
    "hex-ip": "http://0x7f000001:8081/fhir",
    "octal-ip": "http://0177.0.0.1:8081/fhir",
    "bad-port": "https://fhir.example.org:0x1bb/r4",
    "encoded-host": "https://fhir.example.org%2f@collector.evil.example/r4",
}


@pytest.mark.parametrize("server", list(HOSTILE_BASES.values()), ids=list(HOSTILE_BASES))
@responses.activate
def test_hostile_fhir_server_paths_are_refused_before_any_connection(server: str) -> None:
    responses.add(responses.GET, re.compile(r".*"), json=bundle([]))
    with pytest.raises(FhirNotAllowed) as excinfo:
        FhirClient(server, make_settings(), Deadline(3.0), token="tok")
    assert len(responses.calls) == 0
    message = excinfo.value.message
    assert "admin" not in message and "evil" not in message and "pass" not in message


def test_the_effective_allowlist_is_logged_once_at_start(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    app = create_app(make_settings(fhir_allowlist="https://FHIR.example.org:443/r4/; http://127.0.0.1:8081",
                                   ca_bundle=None, REQUESTS_CA_BUNDLE=None, SSL_CERT_FILE=None))
    app.extensions["nms_cds"].close()
    (line,) = [r for r in caplog.records if getattr(r, "event", None) == "outbound-config"]
    assert line.getMessage().startswith("FHIR allowlist: https://fhir.example.org/r4, http://127.0.0.1:8081; "
                                        "TLS trust for FHIR and JWKS calls: ")
    assert "\n" not in JsonFormatter().format(line)


def test_the_fhir_server_base_is_normalised() -> None:
    client = FhirClient("https://FHIR.example.org:443/r4/", make_settings(), Deadline(3.0))
    assert client.base_url == FHIR_BASE
    assert client.url_for("Patient/p1") == FHIR_BASE + "/Patient/p1"


@pytest.mark.parametrize("location", [
    "/r4/../admin", "/r4/..;/admin", "/r4/%2e%2e/admin", "/r4/%EF%BC%8E%EF%BC%8E/admin",
    "/r4/\u00ef\u00bc\u008e\u00ef\u00bc\u008e/admin",  # U+FF0E U+FF0E as a latin-1 header carries it
    "//collector.evil.example/r4",
    "https://fhir.example.org@collector.evil.example/r4/Observation",
    "http://fhir.example.org/r4/Observation",  # a downgrade to http on the same host
    "https://fhir.example.org:8443/r4/Observation",
    "../admin", "./..;/admin",
])
@responses.activate
def test_redirects_with_hostile_paths_are_not_followed(location: str) -> None:
    responses.add(responses.GET, OBS, status=302, headers={"Location": location})
    responses.add(responses.GET, re.compile(r".*"), json=bundle([]))
    with pytest.raises(FhirNotAllowed):
        client_for(token="tok").search("Observation?patient=p1")
    assert len(responses.calls) == 1


@pytest.mark.parametrize("next_url", [
    FHIR_BASE + "/..;/admin?page=2", FHIR_BASE + "/%252e%252e/admin", "https://FHIR.example.org:8443/r4/Observation",
])
@responses.activate
def test_next_links_with_hostile_paths_are_not_followed(next_url: str) -> None:
    responses.add(responses.GET, OBS, json=bundle([temp(1)], next_url))
    result = client_for(token="tok").search("Observation?x=1")
    assert not result.complete and len(responses.calls) == 1


@responses.activate
def test_next_links_in_another_spelling_of_the_base_are_followed() -> None:
    responses.add(responses.GET, OBS, json=bundle([temp(1)], "https://FHIR.example.org:443/r4/Observation?page=2"),
                  match=[responses.matchers.query_param_matcher({"x": "1"})])
    responses.add(responses.GET, OBS, json=bundle([temp(2)]),
                  match=[responses.matchers.query_param_matcher({"page": "2"})])
    result = client_for(token="tok").search("Observation?x=1")
    assert [r["id"] for r in result.resources] == ["t1", "t2"] and result.complete


# --- server free text never reaches messages ---------------------------------------------------------

LEAK = "Theodora Vandermolen MRN-99812 neuroleptic malignant syndrome eyJhbGciOiJIUzI1NiJ9.leak.token"


@pytest.mark.parametrize("answer", [
    {"resourceType": LEAK},
    {"resourceType": "Patient<script>"},
    {"resourceType": "A" * 65},
    {"resourceType": ["Bundle"]},
    {"resourceType": "Bundle\nTheodora"},
    {"resourceType": "OperationOutcome", "issue": [{"code": LEAK, "diagnostics": LEAK,
                                                    "details": {"text": LEAK}}]},
    {"resourceType": "OperationOutcome", "issue": [{"code": "theodora"}, {"code": "exception"}]},
], ids=["free-text", "markup", "too-long", "not-a-string", "newline", "outcome-free-text",
        "outcome-code-not-an-issue-type"])
@responses.activate
def test_server_supplied_resource_types_never_reach_messages(answer: dict[str, Any]) -> None:
    responses.add(responses.GET, re.compile(re.escape(FHIR_BASE) + r"/.*"), json=answer)
    calls: list[Callable[[FhirClient], object]] = [lambda c: c.read("Patient/p1"),
                                                   lambda c: c.search("Observation?patient=p1")]
    for call in calls:
        with pytest.raises(FhirBadResponse) as excinfo:
            call(client_for())
        text = excinfo.value.message + " " + str(excinfo.value.url)
        for word in ("Theodora", "theodora", "MRN-99812", "malignant", "eyJ", "<script>", "AAAA", "p1"):
            assert word not in text, text


def test_resource_name_keeps_only_resource_names() -> None:
    assert resource_name("Observation") == "Observation"
    assert resource_name(LEAK) == "an invalid resourceType"
    assert resource_name(None) == "no resourceType"
    assert resource_name(7) == "an invalid resourceType"
    assert resource_name("Patient\n") == "an invalid resourceType"  # "$" would match before a final newline


def test_budget_exhausted_before_sending_is_a_timeout() -> None:
    with pytest.raises(FhirTimeout):
        client_for(budget=0.0).search("Observation?x=1")


# --- through the service ---------------------------------------------------------------------------------

def _server_request(**overrides: Any) -> dict[str, Any]:
    return hook_request(fhirServer=FHIR_BASE, prefetch={}, **overrides)


@responses.activate
def test_absent_keys_are_fetched_concurrently_with_the_bearer_token(client: FlaskClient) -> None:
    prefetch = febrile_prefetch()
    responses.add(responses.GET, f"{FHIR_BASE}/Patient/p1", json={"resourceType": "Patient", "id": "p1"})
    responses.add(responses.GET, re.compile(re.escape(FHIR_BASE) + r"/(?!Patient/).*"), json=bundle([]))
    body = hook_request(fhirServer=FHIR_BASE, prefetch={"temperature": prefetch["temperature"],
                                                        "labs": prefetch["labs"],
                                                        "medications": prefetch["medications"]},
                        fhirAuthorization={"access_token": "tok-123", "token_type": "Bearer", "expires_in": 300,
                                           "scope": "user/*.read", "subject": "nms-cds"})
    response = client.post(URL, json=body)
    assert response.status_code == 200
    assert response.get_json()["cards"][0]["indicator"] == "critical"
    paths = sorted((c.request.url or "").split("?")[0].removeprefix(FHIR_BASE) for c in responses.calls)
    # vitals, and its baseline fallback (the oldest readings before its window: cds_service.fhir.bounds)
    assert paths == ["/AllergyIntolerance", "/Condition", "/MedicationAdministration", "/MedicationStatement",
                     "/Observation", "/Observation", "/Patient/p1"]
    assert all(c.request.headers["Authorization"] == "Bearer tok-123" for c in responses.calls)


@responses.activate
def test_operation_outcome_prefetch_is_refetched_once(client: FlaskClient) -> None:
    prefetch = febrile_prefetch()
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    labs = prefetch["labs"]
    prefetch["labs"] = outcome
    responses.add(responses.GET, OBS, json=labs)
    response = client.post(URL, json=hook_request(fhirServer=FHIR_BASE, prefetch=prefetch))
    assert response.status_code == 200
    assert response.get_json()["cards"][0]["indicator"] == "critical"
    urls = [c.request.url or "" for c in responses.calls]
    assert len([u for u in urls if "date=ge" in u]) == 1  # the labs query, once
    assert len(urls) == 2  # and the last serum iron before the lab window (cds_service.fhir.bounds)


@responses.activate
def test_paginated_prefetch_is_completed_from_the_server(client: FlaskClient) -> None:
    prefetch = empty_prefetch()
    first = febrile_prefetch()["temperature"]
    first["link"] = [{"relation": "next", "url": f"{FHIR_BASE}/Observation?page=2"}]
    prefetch["temperature"] = first
    responses.add(responses.GET, OBS, json=bundle([]))
    prefetch["labs"] = febrile_prefetch()["labs"]
    response = client.post(URL, json=hook_request(fhirServer=FHIR_BASE, prefetch=prefetch))
    assert response.status_code == 200
    assert len(responses.calls) == 1 and "page=2" in (responses.calls[0].request.url or "")


@pytest.mark.parametrize("failure", [{"status": 401}, {"body": requests.exceptions.ConnectTimeout("down")}])
@responses.activate
def test_all_observation_queries_failing_is_412(client: FlaskClient, failure: dict[str, Any]) -> None:
    responses.add(responses.GET, ANY, **failure)
    response = client.post(URL, json=_server_request())
    assert response.status_code == 412
    assert response.get_json()["resourceType"] == "OperationOutcome"


@responses.activate
def test_partial_failure_degrades_and_says_so(client: FlaskClient) -> None:
    prefetch = febrile_prefetch()
    del prefetch["vitals"], prefetch["medications"]
    responses.add(responses.GET, ANY, status=503)
    response = client.post(URL, json=hook_request(fhirServer=FHIR_BASE, prefetch=prefetch))
    assert response.status_code == 200
    (card,) = response.get_json()["cards"]
    # without the medication record only the draft is known, and a draft never explains findings already
    # there (issue 11): the check is incomplete, and the card says what it could not see
    assert card["indicator"] == "info"
    assert "could not retrieve medication orders, vital signs" in card["detail"]


@responses.activate
def test_disallowed_fhir_server_is_never_contacted(client: FlaskClient) -> None:
    responses.add(responses.GET, re.compile(r".*"), json=bundle([]))
    response = client.post(URL, json=hook_request(fhirServer="https://other.example.com/fhir", prefetch={}))
    assert response.status_code == 412
    assert "NMS_CDS_FHIR_ALLOWLIST" in response.get_json()["issue"][0]["diagnostics"]
    assert len(responses.calls) == 0


@pytest.mark.parametrize("suffix", ["/..;/admin", "/%252e%252e/admin"])
@responses.activate
def test_refused_fhir_server_path_is_named_in_the_412(client: FlaskClient, suffix: str) -> None:
    """A fhirServer under the allowed base but with a refused path says why, not "not in the allowlist"."""
    responses.add(responses.GET, re.compile(r".*"), json=bundle([]))
    response = client.post(URL, json=hook_request(fhirServer=FHIR_BASE + suffix, prefetch={}))
    assert response.status_code == 412
    diagnostics = response.get_json()["issue"][0]["diagnostics"]
    assert "was not contacted" in diagnostics and "allowlist" not in diagnostics.lower()
    assert "admin" not in diagnostics  # the refused URL itself is never repeated
    assert len(responses.calls) == 0
