"""FHIR data access with ``responses``: paging, prefetch fallbacks, errors, timeouts and the allowlist."""

from __future__ import annotations

import re
from typing import Any

import pytest
import requests
import responses
from flask.testing import FlaskClient

from cds_service.config import Settings
from cds_service.errors import FhirAuthError, FhirBadResponse, FhirNotAllowed, FhirTimeout
from cds_service.fhir.client import Deadline, FhirClient, check_allowed
from tests.conftest import FHIR_BASE, make_settings
from tests.test_protocol import URL, empty_prefetch, febrile_prefetch, hook_request

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


def test_budget_exhausted_before_sending_is_a_timeout() -> None:
    with pytest.raises(FhirTimeout):
        client_for(budget=0.0).search("Observation?x=1")


# --- through the service ---------------------------------------------------------------------------------

def _server_request(**overrides: Any) -> dict[str, Any]:
    return hook_request(fhirServer=FHIR_BASE, prefetch={}, **overrides)


@responses.activate
def test_absent_keys_are_fetched_concurrently_with_the_bearer_token(client: FlaskClient) -> None:
    prefetch = febrile_prefetch()
    responses.add(responses.GET, ANY, json=bundle([]))
    responses.add(responses.GET, f"{FHIR_BASE}/Patient/p1", json={"resourceType": "Patient", "id": "p1"})
    body = hook_request(fhirServer=FHIR_BASE, prefetch={"temperature": prefetch["temperature"],
                                                        "labs": prefetch["labs"],
                                                        "medications": prefetch["medications"]},
                        fhirAuthorization={"access_token": "tok-123", "token_type": "Bearer", "expires_in": 300,
                                           "scope": "user/*.read", "subject": "nms-cds"})
    response = client.post(URL, json=body)
    assert response.status_code == 200
    assert response.get_json()["cards"][0]["indicator"] == "critical"
    paths = sorted((c.request.url or "").split("?")[0].removeprefix(FHIR_BASE) for c in responses.calls)
    assert paths == ["/AllergyIntolerance", "/Condition", "/MedicationAdministration", "/MedicationStatement",
                     "/Observation", "/Patient/p1"]
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
    assert len(responses.calls) == 1


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
    assert "allowlist" in response.get_json()["issue"][0]["diagnostics"]
    assert len(responses.calls) == 0
