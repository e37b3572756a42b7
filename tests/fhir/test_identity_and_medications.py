"""Only this patient, proven by a literal reference; and every medication record identified or counted.

- identity: a resource is the patient's only when its subject / patient reference resolves to
  ``Patient/{context.patientId}`` on the FHIR server in use; identifier-only, display-only and other-server
  references are excluded, counted by type and why, logged (never their content) and shown on the card, for
  prefetch, the service's own queries and draftOrders (cds_service/fhir/scope.py);
- medications: the prefetch templates ``_include`` the Medications the records reference; included and
  contained Medications identify the drug; a reference that still cannot be resolved is counted on the card.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

import pytest
import responses
from flask.testing import FlaskClient

from cds_service.devtools import fixtures
from cds_service.fhir.scope import unproven
from cds_service.net.urls import parse_url
from cds_service.services.templates import prefetch_templates
from tests.conftest import FHIR_BASE
from tests.protocol.test_protocol import URL, febrile_prefetch, hook_request

PID = "p1"
OTHER_SERVER = "https://other.example/fhir"


def _obs(subject: dict[str, Any] | None) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Observation", "id": "o1"}
    if subject is not None:
        resource["subject"] = subject
    return resource


@pytest.mark.parametrize(("resource", "base", "why"), [
    (_obs({"reference": "Patient/p1"}), None, None),
    (_obs({"reference": " Patient/p1/_history/3"}), None, None),
    (_obs({"reference": f"{FHIR_BASE}/Patient/p1"}), FHIR_BASE, None),
    (_obs({"reference": "HTTPS://FHIR.example.org:443/r4/Patient/p1"}), FHIR_BASE, None),  # same server, spelt so
    (_obs({"reference": "urn:uuid:p1"}), None, None),  # a transaction Bundle's fullUrl of this Patient
    (_obs({"reference": "Patient/p2"}), None, "another patient"),
    (_obs({"reference": f"{FHIR_BASE}/Patient/p2"}), FHIR_BASE, "another patient"),
    (_obs({"reference": f"{OTHER_SERVER}/Patient/p1"}), FHIR_BASE, "other server"),
    (_obs({"reference": f"{FHIR_BASE}/Patient/p1"}), None, "other server"),  # no fhirServer: no absolute is ours
    (_obs({"reference": "https://fhir.example.org/r4-evil/Patient/p1"}), FHIR_BASE, "other server"),
    (_obs({"reference": f"{FHIR_BASE}/Group/x/Patient/p1"}), FHIR_BASE, "another patient"),  # not a Patient
    (_obs({"reference": "Group/x/Patient/p1"}), None, "another patient"),
    (_obs({"identifier": {"system": "urn:mrn", "value": "p1"}}), None, "by identifier"),
    (_obs({"identifier": {"value": "p1"}, "display": "p1"}), None, "by identifier"),
    (_obs({"display": "Patient p1"}), None, "by display"),
    (_obs({}), None, "no reference"),
    (_obs(None), None, "no reference"),
    (_obs({"reference": ""}), None, "no reference"),
    ({"resourceType": "AllergyIntolerance", "patient": {"identifier": {"value": "p1"}}}, None, "by identifier"),
    ({"resourceType": "Medication", "id": "m1"}, None, None),  # no patient link by type
    ({"resourceType": "Patient", "id": "p1"}, None, None),
    ({"resourceType": "Patient", "id": "p2"}, None, "another patient"),
])
def test_only_a_literal_reference_proves_the_patient(resource: dict[str, Any], base: str | None,
                                                    why: str | None) -> None:
    parsed = parse_url(base, allow_query=False) if base else None
    assert unproven(resource, PID, parsed) == why


def test_a_draft_without_subject_is_the_context_patients_and_a_look_alike_draft_is_not() -> None:
    draft = {"resourceType": "MedicationRequest", "status": "draft"}
    assert unproven(draft, PID, None, draft=True) is None
    assert unproven({**draft, "subject": {"identifier": {"value": "x"}}}, PID, None, draft=True) == "by identifier"


LOOK_ALIKES = {
    "by identifier": {"identifier": {"system": "urn:oid:1.2.276.0.76.4.8", "value": "MRN-0042"}},
    "by display": {"display": "Doe, Jane"},
    "other server": {"reference": f"{OTHER_SERVER}/Patient/{PID}"},
}


def _relabel(prefetch: dict[str, Any], subject: dict[str, Any]) -> dict[str, Any]:
    """Every resource of ``prefetch``'s Bundles moved under ``subject``."""
    out = copy.deepcopy(prefetch)
    for value in out.values():
        for entry in (value or {}).get("entry", []):
            entry["resource"]["subject"] = copy.deepcopy(subject)
    return out


@pytest.mark.parametrize("why", sorted(LOOK_ALIKES))
def test_another_patients_findings_under_a_look_alike_subject_give_no_card(
        client: FlaskClient, caplog: pytest.LogCaptureFixture, why: str) -> None:
    body = hook_request(prefetch=_relabel(febrile_prefetch(), LOOK_ALIKES[why]))
    with caplog.at_level(logging.WARNING, logger="cds_service.scope"):
        response = client.post(URL, json=body)
    assert response.status_code == 200
    assert response.get_json()["cards"] == []
    (event,) = [r for r in caplog.records if getattr(r, "event", None) == "data-integrity"]
    reason: str = event.reason  # type: ignore[attr-defined]
    assert f"Observation ({why}) 3" in reason and f"MedicationRequest ({why}) 1" in reason
    for secret in ("MRN-0042", "Doe", "other.example", "o1", "active-1"):  # counts and types only
        assert secret not in reason and secret not in event.getMessage()


def test_look_alike_copies_are_counted_on_the_card(client: FlaskClient) -> None:
    prefetch = febrile_prefetch()
    foreign = _relabel(febrile_prefetch(), LOOK_ALIKES["by identifier"])["temperature"]["entry"]
    prefetch["temperature"]["entry"] += foreign
    (card,) = client.post(URL, json=hook_request(prefetch=prefetch)).get_json()["cards"]
    assert card["indicator"] == "critical"
    assert "2 resource(s) of another patient dropped and not used (2 Observation (by identifier))" in card["detail"]


def test_a_look_alike_draft_is_not_the_exposure(client: FlaskClient) -> None:
    body = copy.deepcopy(hook_request(prefetch=febrile_prefetch()))  # the draft is shared with other tests
    draft = body["context"]["draftOrders"]["entry"][0]["resource"]
    draft["subject"] = LOOK_ALIKES["by display"]
    (card,) = client.post(URL, json=body).get_json()["cards"]
    assert "draft MedicationRequest (by display)" in card["detail"]
    assert not any(s["label"].startswith("Remove") for s in card.get("suggestions", []))


def test_the_identity_scenario_counts_every_look_alike(client: FlaskClient, caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    scenario = fixtures.load_scenario("identity-by-shape")
    for hook in fixtures.HOOKS:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="cds_service.scope"):
            answer = client.post(f"/cds-services/nms-{hook}", json=scenario.request_for(hook)).get_json()
        assert answer["cards"] == []
        (event,) = [r for r in caplog.records if getattr(r, "event", None) == "data-integrity"]
        for why in LOOK_ALIKES:
            assert f"Observation ({why})" in event.reason and f"MedicationRequest ({why}) 1" in event.reason


def _server_bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def _serve(prefetch: dict[str, Any]) -> None:
    """A FHIR server answering every search with what ``prefetch`` holds for its resource type."""
    templates = prefetch_templates()
    responses.add(responses.GET, f"{FHIR_BASE}/Patient/{PID}", json={"resourceType": "Patient", "id": PID})
    by_path: dict[str, list[dict[str, Any]]] = {}
    for key, template in templates.items():
        path = template.split("?", 1)[0]
        for entry in (prefetch.get(key) or {}).get("entry", []):
            by_path.setdefault(path, []).append(entry["resource"])
    for path in {t.split("?", 1)[0] for t in templates.values() if "?" in t}:
        # an Observation search answers with every Observation (a server that ignores the code filter)
        responses.add(responses.GET, re.compile(re.escape(f"{FHIR_BASE}/{path}") + r"\?.*"),
                      json=_server_bundle(by_path.get(path, [])))


@pytest.mark.parametrize(("subject", "card"), [
    ({"reference": f"{FHIR_BASE}/Patient/{PID}"}, "critical"),  # absolute on the server in use: literal
    (LOOK_ALIKES["other server"], None),
    (LOOK_ALIKES["by identifier"], None),
])
@responses.activate
def test_the_services_own_queries_apply_the_same_proof(client: FlaskClient, subject: dict[str, Any],
                                                       card: str | None) -> None:
    _serve(_relabel(febrile_prefetch(), subject))
    response = client.post(URL, json=hook_request(fhirServer=FHIR_BASE, prefetch={}))
    assert response.status_code == 200
    assert [c["indicator"] for c in response.get_json()["cards"]] == ([card] if card else [])


# --- medications: included, contained, or counted ------------------------------------------------------

def test_the_templates_include_the_referenced_medications() -> None:
    templates = prefetch_templates()
    for key, kind in (("medications", "MedicationRequest"), ("administrations", "MedicationAdministration"),
                      ("statements", "MedicationStatement")):
        assert f"_include={kind}:medication" in templates[key]


def test_fill_prefetch_includes_medications_like_a_server() -> None:
    scenario = fixtures.load_scenario("german-medication-reference")
    prefetch = fixtures.fill_prefetch(scenario.resources, prefetch_templates(), scenario.patient_id)
    for key in ("medications", "administrations", "statements"):
        entries = prefetch[key]["entry"]
        modes = [e["search"]["mode"] for e in entries]
        assert modes == sorted(modes, key=["match", "include"].index) and "include" in modes
        included = [e["resource"] for e in entries if e["search"]["mode"] == "include"]
        assert all(r["resourceType"] == "Medication" for r in included)
        assert prefetch[key]["total"] == modes.count("match")  # included resources are no matches
    coded = {e["resource"]["code"]["coding"][0]["code"] for e in prefetch["administrations"]["entry"]
             if e["search"]["mode"] == "include"}
    assert coded == {"N05AD01"}


def _without_included(request: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(request)
    for value in out["prefetch"].values():
        if isinstance(value, dict) and "entry" in value:
            value["entry"] = [e for e in value["entry"] if e["search"]["mode"] == "match"]
    return out


def _data_line(card: dict[str, Any]) -> str:
    return next(line for line in card["detail"].split("\n") if line.startswith("**Data:**"))


def test_included_medications_identify_the_drug_prefetch_only(client: FlaskClient) -> None:
    scenario = fixtures.load_scenario("german-medication-reference")
    for hook in fixtures.HOOKS:
        (card,) = client.post(f"/cds-services/nms-{hook}", json=scenario.request_for(hook)).get_json()["cards"]
        assert card["indicator"] == "critical" and "haloperidol" in card["summary"]
        assert "could not be identified" not in card["detail"]
    # a client that drops _include: the records stay unidentified and nothing claims haloperidol
    answer = client.post(URL, json=_without_included(scenario.request)).get_json()
    assert all("haloperidol" not in c["summary"] for c in answer["cards"])


@responses.activate
def test_a_medication_missing_from_prefetch_is_read_once_from_the_server(client: FlaskClient) -> None:
    scenario = fixtures.load_scenario("german-medication-reference")
    medications = {r["id"]: r for r in scenario.resources if r["resourceType"] == "Medication"}
    for rid, resource in medications.items():
        responses.add(responses.GET, f"{FHIR_BASE}/Medication/{rid}", json=resource)
    body = _without_included(scenario.request)
    body["fhirServer"] = FHIR_BASE
    (card,) = client.post(URL, json=body).get_json()["cards"]
    assert card["indicator"] == "critical" and "haloperidol" in card["summary"]
    reads = sorted((c.request.url or "").removeprefix(FHIR_BASE) for c in responses.calls)
    assert reads == sorted(f"/Medication/{rid}" for rid in medications)  # each once, nothing else fetched


def test_unresolvable_medications_are_counted_on_every_card(client: FlaskClient) -> None:
    scenario = fixtures.load_scenario("german-medication-unresolved")
    for hook in fixtures.HOOKS:
        (card,) = client.post(f"/cds-services/nms-{hook}", json=scenario.request_for(hook)).get_json()["cards"]
        assert ("4 medication records could not be identified (Medication not in prefetch, no FHIR server)"
                in _data_line(card))


@responses.activate
def test_unresolvable_medications_on_a_server_that_lacks_them(client: FlaskClient) -> None:
    scenario = fixtures.load_scenario("german-medication-unresolved")
    responses.add(responses.GET, re.compile(re.escape(f"{FHIR_BASE}/Medication/") + ".*"), status=404)
    body = copy.deepcopy(scenario.request)
    body["fhirServer"] = FHIR_BASE
    (card,) = client.post(URL, json=body).get_json()["cards"]
    assert ("4 medication records could not be identified (Medication not in prefetch, could not be read from "
            "the FHIR server)") in _data_line(card)
    assert len(responses.calls) == 1  # the one Medication the four records name, read once


def test_the_info_card_counts_them_too(client: FlaskClient) -> None:
    prefetch = copy.deepcopy(febrile_prefetch())
    del prefetch["vitals"], prefetch["medications"]  # not in prefetch, no fhirServer: the check is incomplete
    prefetch["administrations"] = _server_bundle([{
        "resourceType": "MedicationAdministration", "id": "ref-1", "status": "completed",
        "subject": {"reference": f"Patient/{PID}"}, "effectiveDateTime": "2026-11-22T08:00:00Z",
        "medicationReference": {"reference": "Medication/gone"}}])
    (card,) = client.post(URL, json=hook_request(prefetch=prefetch)).get_json()["cards"]
    assert card["indicator"] == "info"
    assert "1 medication record could not be identified (Medication not in prefetch, no FHIR server)" in card[
        "detail"]


@pytest.mark.parametrize(("reference", "contained", "why"), [
    ("#m1", [], "contained Medication missing"),
    ("#m1", [{"resourceType": "Medication", "id": "m1"}], "Medication without a code"),
    (f"{OTHER_SERVER}/Medication/m1", [], "reference to a Medication elsewhere"),
])
def test_other_unresolvable_shapes_say_why(client: FlaskClient, reference: str, contained: list[dict[str, Any]],
                                           why: str) -> None:
    prefetch = febrile_prefetch()
    record = prefetch["medications"]["entry"][0]["resource"]
    prefetch["medications"]["entry"].append({"resource": {
        **{k: v for k, v in record.items() if k != "medicationCodeableConcept"}, "id": "ref-2",
        "medicationReference": {"reference": reference}, **({"contained": contained} if contained else {})}})
    (card,) = client.post(URL, json=hook_request(prefetch=prefetch)).get_json()["cards"]
    assert f"1 medication record could not be identified ({why})" in _data_line(card)


def test_a_display_names_the_drug_so_it_is_not_counted(client: FlaskClient) -> None:
    prefetch = febrile_prefetch()
    record = prefetch["medications"]["entry"][0]["resource"]
    prefetch["medications"]["entry"][0]["resource"] = {
        **{k: v for k, v in record.items() if k != "medicationCodeableConcept"},
        "medicationReference": {"reference": "Medication/gone", "display": "haloperidol 5 mg"}}
    (card,) = client.post(URL, json=hook_request(prefetch=prefetch)).get_json()["cards"]
    assert card["indicator"] == "critical" and "could not be identified" not in card["detail"]


def test_discovery_promises_only_what_is_true(client: FlaskClient) -> None:
    for service in client.get("/cds-services").get_json()["services"]:
        text = service["usageRequirements"]
        assert "Works from prefetch alone when every key is filled, with the Medications" in text
        assert "_include" in text and "not identified" in text
