"""CDS Hooks 2.0.1 conformance: a walk through the spec checklist (discovery, call, prefetch, cards, feedback, JWT,
CORS, errors)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import responses
from flask.testing import FlaskClient

from cds_service.services.templates import prefetch_templates
from tests.conftest import dataset_json
from tests.helpers.cdshooks_check import card_problems, discovery_problems, response_problems
from tests.helpers.outcome import issue

URL = "/cds-services/nms-order-sign"
HALOPERIDOL_DRAFT = {
    "resourceType": "MedicationRequest", "id": "draft-1", "status": "draft", "intent": "order",
    "subject": {"reference": "Patient/p1"},
    "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                              "code": "5093", "display": "haloperidol"}]},
}


def empty_prefetch() -> dict[str, Any]:
    return {key: None for key in prefetch_templates()}


def hook_request(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "order-sign",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/example", "patientId": "p1",
                    "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": HALOPERIDOL_DRAFT}]}},
        "prefetch": empty_prefetch(),
    }
    body.update(overrides)
    return body


def febrile_prefetch() -> dict[str, Any]:
    prefetch = empty_prefetch()

    def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}

    def observation(i: int, code: str, value: float, unit: str, when: str) -> dict[str, Any]:
        return {"resourceType": "Observation", "id": f"o{i}", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "subject": {"reference": "Patient/p1"}, "effectiveDateTime": when,
                "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}

    prefetch["temperature"] = bundle(observation(1, "8310-5", 38.9, "Cel", "2026-11-23T20:00:00Z"),
                                     observation(2, "8310-5", 39.4, "Cel", "2026-11-24T08:00:00Z"))
    prefetch["labs"] = bundle(observation(3, "2157-6", 9400, "U/L", "2026-11-24T09:00:00Z"))
    # haloperidol in effect before the fever (issue 11: a draft alone never explains findings already there)
    prefetch["medications"] = bundle({**HALOPERIDOL_DRAFT, "id": "active-1", "status": "active",
                                      "authoredOn": "2026-11-21T08:00:00Z"})
    return prefetch


# --- 1. discovery ------------------------------------------------------------------------------------

def test_discovery_lists_the_three_services(client: FlaskClient) -> None:
    response = client.get("/cds-services")
    assert response.status_code == 200
    body = response.get_json()
    assert discovery_problems(body) == []
    hooks = {s["hook"]: s for s in body["services"]}
    assert [s["hook"] for s in body["services"]] == ["patient-view", "order-select", "order-sign"]
    assert {h: s["id"] for h, s in hooks.items()} == {
        "patient-view": "nms-patient-view", "order-select": "nms-order-select", "order-sign": "nms-order-sign"}
    for other in ("patient-view", "order-select"):  # every hook gets the same data, by the same templates
        assert hooks[other]["prefetch"] == hooks["order-sign"]["prefetch"]
        assert "NMS" in hooks[other]["title"] and hooks[other]["description"]
    service = hooks["order-sign"]
    assert service["title"] and service["description"]
    prefetch = service["prefetch"]
    assert prefetch["patient"] == "Patient/{{context.patientId}}"
    assert set(prefetch) == {"patient", "medications", "administrations", "statements", "temperature", "vitals",
                             "labs", "conditions", "allergies"}
    for key in ("temperature", "vitals", "labs"):
        assert "_sort=-date" in prefetch[key]
    for code in ("8310-5", "8331-1", "8867-4", "9279-1", "85354-9", "2157-6", "2498-4", "14798-3",
                 "6690-2", "1988-5", "1751-7"):
        assert any(code in t for t in prefetch.values()), code
    assert prefetch["conditions"] == "Condition?patient={{context.patientId}}&_count=100"  # NMS history + infections


def test_the_spec_discovery_example_passes_the_same_checker() -> None:
    raw = json.dumps(dataset_json("cds-hooks-spec-examples/cds-hooks--index--block00-discovery.json"))
    example = json.loads(raw.replace("{% raw  %}{{{% endraw  %}", "{{"))
    assert discovery_problems(example) == []
    assert discovery_problems({"services": [{"hook": "x", "id": "y", "description": "z",
                                             "prefetch": {"a": "Observation?patient={{context.patientId}}"
                                                               "&sort:desc=date"}}]})


# --- 2. service call: validation -------------------------------------------------------------------

@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b.pop("hook"), "hook"),
        (lambda b: b.pop("hookInstance"), "hookInstance"),
        (lambda b: b.pop("context"), "context"),
        (lambda b: b["context"].pop("patientId"), "context.patientId"),
        (lambda b: b["context"].pop("userId"), "context.userId"),
        (lambda b: b["context"].pop("draftOrders"), "context.draftOrders"),
        (lambda b: b.update(hookInstance=12), "hookInstance"),
        (lambda b: b["context"].update(patientId="a/b?c"), "context.patientId"),
        (lambda b: b.update(prefetch=[1]), "prefetch"),
        (lambda b: b.update(hook="patient-view"), "hook"),
        (lambda b: b.update(fhirAuthorization={"access_token": "t", "token_type": "Bearer"}), "fhirServer"),
        (lambda b: b["context"]["draftOrders"].update(entry={"x": 1}), "context.draftOrders.entry"),
    ],
)
def test_malformed_requests_get_400_naming_the_field(client: FlaskClient, mutate: Any, field: str) -> None:
    body = hook_request()
    mutate(body)
    response = client.post(URL, json=body)
    assert response.status_code == 400
    error = response.get_json()
    assert issue(error)["field"] == field
    assert field.split(".")[-1] in issue(error)["diagnostics"]


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"\xff\xfe", b'"text"', b"null"])
def test_non_object_bodies_get_400_json(client: FlaskClient, raw: bytes) -> None:
    response = client.post(URL, data=raw, content_type="application/json")
    assert response.status_code == 400
    assert issue(response.get_json())["code"] == "invalid"


@pytest.mark.parametrize("spelling", [b'"\\ud800"', b'"\\uDFFF tail"', b'"\xed\xa0\x80"', b'"x\xed\xbf\xbf"'])
def test_a_lone_surrogate_in_either_spelling_gets_400(client: FlaskClient, spelling: bytes) -> None:
    """As a JSON escape or as raw (surrogatepass) bytes, anywhere in a large body: the quick one-byte
    pre-checks in protocol/decode.py must never skip the search."""
    body = json.dumps(hook_request()).encode()
    body = body[:-1] + b', "note": ' + spelling + b"}"
    response = client.post(URL, data=body, content_type="application/json")
    assert response.status_code == 400
    assert "surrogate" in issue(response.get_json())["diagnostics"]


def test_unknown_service_is_404_and_unknown_route_is_json(client: FlaskClient) -> None:
    assert client.post("/cds-services/nope", json=hook_request()).status_code == 404
    response = client.get("/nothing-here")
    assert response.status_code == 404 and issue(response.get_json())["code"] == "not-found"
    assert client.delete(URL).status_code == 405


def test_unknown_extensions_are_ignored(client: FlaskClient) -> None:
    extension = dataset_json("cds-hooks-spec-examples/cds-hooks--index--block28-request.json")["extension"]
    body = hook_request(extension=extension)
    body["context"]["extension"] = extension
    response = client.post(URL, json=body)
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}


# --- 3. draft orders parsed leniently ------------------------------------------------------------------

def test_lenient_draft_orders(client: FlaskClient) -> None:
    sandbox = dataset_json("sandbox-requests/sandbox-order-sign-request.json")
    clozapine = sandbox["context"]["draftOrders"]["entry"][0]["resource"]
    assert isinstance(clozapine["category"], dict)  # the real client's quirk
    nutrition = dataset_json("cds-hooks-spec-examples/cds-hooks-library--order-sign--block00-context.json")
    other_orders = [e for e in nutrition["context"]["draftOrders"]["entry"]]
    # the orders come from other examples' patients; here they are p1's (another patient's drafts are dropped)
    clozapine = {**clozapine, "subject": {"reference": "Patient/p1"}}
    other_orders = [{"resource": {**e["resource"], "subject": {"reference": "Patient/p1"}}} for e in other_orders]
    entries = [
        {"resource": clozapine},
        {"resource": {"resourceType": "MedicationRequest", "status": "draft"}},  # no medication, no intent
        {"resource": {k: v for k, v in HALOPERIDOL_DRAFT.items() if k != "id"}},  # no id
        *other_orders,  # NutritionOrder + STU3-shaped dose
        {"resource": {"resourceType": "MedicationRequest", "id": "ref-contained", "status": "draft",
                      "intent": "order", "subject": {"reference": "Patient/p1"},
                      "contained": [{"resourceType": "Medication", "id": "m",
                                     "code": {"text": "olanzapine 10 MG Oral Tablet"}}],
                      "medicationReference": {"reference": "#m"}}},
        {"resource": {"resourceType": "MedicationRequest", "id": "ref-server", "status": "draft",
                      "intent": "order", "subject": {"reference": "Patient/p1"},
                      "medicationReference": {"reference": "Medication/abc", "display": "risperidone 1 MG"}}},
    ]
    body = hook_request(prefetch=febrile_prefetch())
    body["context"]["draftOrders"] = {"resourceType": "Bundle", "entry": entries}  # no Bundle.type
    response = client.post(URL, json=body)
    assert response.status_code == 200
    (card,) = response.get_json()["cards"]
    assert card_problems(card) == []
    for name in ("clozapine", "haloperidol", "olanzapine", "risperidone"):
        assert name in card["detail"]
    assert "1 draft order could not be read: missing medication" in card["detail"]  # counted by kind and reason
    deleted = [a["resourceId"] for s in card["suggestions"] for a in s["actions"] if a["type"] == "delete"]
    assert sorted(deleted) == ["MedicationRequest/ref-contained", "MedicationRequest/ref-server",
                               "MedicationRequest/request-123"]


# --- 4. prefetch semantics -------------------------------------------------------------------------------

def test_null_and_empty_bundles_are_no_data(client: FlaskClient) -> None:
    prefetch = empty_prefetch()
    prefetch["labs"] = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    response = client.post(URL, json=hook_request(prefetch=prefetch))
    assert response.status_code == 200 and response.get_json() == {"cards": []}


def test_absent_keys_without_fhir_server_is_412_with_operation_outcome(client: FlaskClient) -> None:
    response = client.post(URL, json=hook_request(prefetch={}))
    assert response.status_code == 412
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "temperature" in outcome["issue"][0]["diagnostics"]


def test_operation_outcome_prefetch_is_not_data(client: FlaskClient) -> None:
    prefetch = febrile_prefetch()
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    for key in ("temperature", "vitals", "labs"):
        prefetch[key] = outcome
    response = client.post(URL, json=hook_request(prefetch=prefetch))
    assert response.status_code == 412


# --- 5. responses and cards ----------------------------------------------------------------------------

def test_critical_card_is_valid_and_stable(client: FlaskClient) -> None:
    body = hook_request(prefetch=febrile_prefetch())
    first = client.post(URL, json=body).get_json()
    second = client.post(URL, json=copy.deepcopy(body)).get_json()
    assert response_problems(first) == []
    (card,) = first["cards"]
    assert card["indicator"] == "critical"
    assert card["summary"] == "Possible NMS: haloperidol + T 39.4 °C ×2 + CK 9,400 U/L (28×ULN)"
    assert card["uuid"] == second["cards"][0]["uuid"]
    assert card["selectionBehavior"] == "any"
    assert "NMS diagnosed" not in card["detail"] and "possible neuroleptic malignant syndrome" in card["detail"].lower()
    assert card["source"]["url"].startswith("https://pubmed.ncbi.nlm.nih.gov/21733489")
    other = client.post(URL, json=hook_request(prefetch=febrile_prefetch(), hookInstance="other")).get_json()
    assert other["cards"][0]["uuid"] != card["uuid"]


def test_the_spec_card_examples_are_judged_like_ours() -> None:
    good = dataset_json("cds-hooks-spec-examples/cds-hooks--index--block19-response-cards.json")
    bad = dataset_json("cds-hooks-spec-examples/cds-hooks--index--block20-response-cards.json")
    assert response_problems(good) == []
    assert any("indicator" in p for p in response_problems(bad))


# --- 6. feedback ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("block", ["block21", "block22", "block23"])
def test_spec_feedback_examples_are_accepted(client: FlaskClient, block: str) -> None:
    example = dataset_json(f"cds-hooks-spec-examples/cds-hooks--index--{block}-fragment.json")
    response = client.post(URL + "/feedback", json=example)
    assert response.status_code == 200
    assert response.get_json()["received"] == len(example["feedback"])


def test_feedback_is_idempotent_and_accepts_sandbox_overrides(client: FlaskClient) -> None:
    item = {"card": "c1", "outcome": "overridden", "outcomeTimestamp": "2026-11-24T10:00:00Z",
            "overrideReason": {"reason": {"code": "x", "system": "http://example.org"}}}  # sandbox: no display
    first = client.post(URL + "/feedback", json={"feedback": [item]}).get_json()
    again = client.post(URL + "/feedback", json={"feedback": [item, item]}).get_json()
    assert first == {"received": 1, "new": 1}
    assert again == {"received": 2, "new": 0}


@pytest.mark.parametrize(
    "body",
    [{}, {"feedback": []}, {"feedback": [{"card": "c"}]},
     {"feedback": [{"card": "c", "outcome": "accepted", "outcomeTimestamp": "t"}]},
     {"feedback": [{"card": "c", "outcome": "maybe", "outcomeTimestamp": "t"}]}],
)
def test_bad_feedback_is_400(client: FlaskClient, body: dict[str, Any]) -> None:
    response = client.post(URL + "/feedback", json=body)
    assert response.status_code == 400 and issue(response.get_json())["diagnostics"]


def test_feedback_for_unknown_service_is_404(client: FlaskClient) -> None:
    body = {"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "t"}]}
    assert client.post("/cds-services/nope/feedback", json=body).status_code == 404


# --- 7. CORS -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/cds-services", URL, URL + "/feedback"])
def test_cors_preflight_on_every_route(client: FlaskClient, path: str) -> None:
    response = client.options(path, headers={"Origin": "http://127.0.0.1:3000",
                                             "Access-Control-Request-Method": "POST",
                                             "Access-Control-Request-Headers": "authorization,content-type"})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed


def test_cors_headers_on_post_and_errors_too(client: FlaskClient) -> None:
    assert client.post(URL, json=hook_request()).headers["Access-Control-Allow-Origin"] == "*"
    assert client.post(URL, data=b"{").headers["Access-Control-Allow-Origin"] == "*"


# --- 8. real clients' requests -------------------------------------------------------------------------

@responses.activate
def test_sandbox_order_sign_request_is_accepted(client: FlaskClient) -> None:
    request = dataset_json("sandbox-requests/sandbox-order-sign-request.json")
    base = request["fhirServer"]
    responses.add(responses.GET, f"{base}/Patient/{request['context']['patientId']}",
                  json=request["prefetch"]["patient"])
    for resource in ("MedicationRequest", "MedicationAdministration", "MedicationStatement", "Observation",
                     "Condition", "AllergyIntolerance"):
        responses.add(responses.GET, f"{base}/{resource}", json={"resourceType": "Bundle", "type": "searchset"})
    response = client.post(URL, json=request)
    assert response.status_code == 200
    assert response_problems(response.get_json()) == []
    sent = [c.request for c in responses.calls]
    # its "patient" key matches ours; the eight other keys are fetched, and the two queries for readings
    # before the vitals' and labs' windows (the baseline fallback, the previous serum iron: fhir/bounds.py)
    assert len(sent) == 8 + 2
    assert not any("/Patient/" in (r.url or "") for r in sent)
    assert all("Authorization" not in r.headers for r in sent)  # open server: anonymous


@responses.activate
def test_spec_order_sign_example_with_paginated_prefetch(client: FlaskClient) -> None:
    request = dataset_json("cds-hooks-spec-examples/cds-hooks--index--block03-request.json")
    responses.add(responses.GET, "https://ehr.example.org/fhir/Patient/1288992",
                  json={"resourceType": "Patient", "id": "1288992"})
    for resource in ("MedicationRequest", "MedicationAdministration", "MedicationStatement", "Observation",
                     "Condition", "AllergyIntolerance"):
        responses.add(responses.GET, f"https://ehr.example.org/fhir/{resource}",
                      json={"resourceType": "Bundle", "type": "searchset"})
    app_settings = client.application.extensions["nms_cds"].settings
    app_settings.fhir_allowlist.append("https://ehr.example.org/fhir")
    response = client.post(URL, json=request)
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}  # amoxicillin: no dopamine antagonist
