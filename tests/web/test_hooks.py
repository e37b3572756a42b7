"""Conformance walk for the ``patient-view`` and ``order-select`` services (CDS Hooks 2.0, hook library R4):
discovery, per-hook context validation, the card policy of each hook, repeated cards, 412, feedback, CORS,
and the reference sandbox's recorded requests."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import responses
from flask.testing import FlaskClient

from cds_service.config import Settings
from cds_service.devtools import fixtures
from tests.conftest import dataset_json, make_settings
from tests.helpers.cdshooks_check import card_problems, discovery_problems, response_problems
from tests.helpers.outcome import issue
from tests.protocol.test_protocol import HALOPERIDOL_DRAFT, empty_prefetch, febrile_prefetch, hook_request

PATIENT_VIEW = "/cds-services/nms-patient-view"
ORDER_SELECT = "/cds-services/nms-order-select"
ORDER_SIGN = "/cds-services/nms-order-sign"
AMOXICILLIN_DRAFT = {
    "resourceType": "MedicationRequest", "id": "draft-2", "status": "draft", "intent": "order",
    "subject": {"reference": "Patient/p1"},
    "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                              "code": "723", "display": "amoxicillin"}]},
}


@pytest.fixture
def settings() -> Settings:
    return make_settings(fixed_now=fixtures.ANCHOR)


def patient_view(**overrides: Any) -> dict[str, Any]:
    body = hook_request(hook="patient-view", **overrides)
    body["context"].pop("draftOrders")
    return body


def order_select(selections: list[str], drafts: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    body = hook_request(hook="order-select", **overrides)
    body["context"]["draftOrders"] = {"resourceType": "Bundle", "entry": [{"resource": d} for d in drafts]}
    body["context"]["selections"] = selections
    return body


def cards(client: FlaskClient, url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.post(url, json=body)
    assert response.status_code == 200, response.get_json()
    answer: dict[str, Any] = response.get_json()
    assert response_problems(answer) == []
    result: list[dict[str, Any]] = answer["cards"]
    return result


def actions(card: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [a for s in card.get("suggestions", []) for a in s["actions"] if a["type"] == kind]


# --- discovery -----------------------------------------------------------------------------------------

def test_discovery_defines_each_hook(client: FlaskClient) -> None:
    body = client.get("/cds-services").get_json()
    assert discovery_problems(body) == []
    services = {s["hook"]: s for s in body["services"]}
    assert services["patient-view"]["id"] == "nms-patient-view"
    assert services["order-select"]["id"] == "nms-order-select"
    for service in services.values():  # 2.0 tokens only; never a token into draftOrders or selections
        tokens = {t for template in service["prefetch"].values() for t in re.findall(r"\{\{(.*?)\}\}", template)}
        assert tokens == {"context.patientId"}
        assert "chart" in services["patient-view"]["title"] and "picked" in services["order-select"]["title"]


def test_the_checker_knows_which_context_fields_are_not_tokens() -> None:
    def one(hook: str, template: str) -> dict[str, Any]:
        return {"services": [{"hook": hook, "id": "x", "description": "d", "prefetch": {"k": template}}]}

    assert discovery_problems(one("order-select", "MedicationRequest/{{context.selections}}"))
    assert discovery_problems(one("order-sign", "Bundle/{{context.draftOrders}}"))
    assert discovery_problems(one("patient-view", "Encounter/{{context.encounterId}}")) == []


def test_service_ids_are_configurable_and_distinct() -> None:
    settings = make_settings(patient_view_service_id="nms-chart")
    assert settings.patient_view_service_id == "nms-chart"
    with pytest.raises(ValueError, match="must differ"):
        make_settings(patient_view_service_id="nms-order-sign")


# --- per-hook context validation -------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("url", "make", "mutate", "field"),
    [
        (PATIENT_VIEW, patient_view, lambda b: b["context"].pop("patientId"), "context.patientId"),
        (PATIENT_VIEW, patient_view, lambda b: b["context"].pop("userId"), "context.userId"),
        (PATIENT_VIEW, patient_view, lambda b: b["context"].update(encounterId="a b"), "context.encounterId"),
        (PATIENT_VIEW, patient_view, lambda b: b.update(hook="order-sign"), "hook"),
        (ORDER_SELECT, lambda: order_select(["MedicationRequest/draft-1"], [HALOPERIDOL_DRAFT]),
         lambda b: b["context"].pop("selections"), "context.selections"),
        (ORDER_SELECT, lambda: order_select(["MedicationRequest/draft-1"], [HALOPERIDOL_DRAFT]),
         lambda b: b["context"].update(selections=[]), "context.selections"),
        (ORDER_SELECT, lambda: order_select(["MedicationRequest/draft-1"], [HALOPERIDOL_DRAFT]),
         lambda b: b["context"].update(selections="MedicationRequest/draft-1"), "context.selections"),
        (ORDER_SELECT, lambda: order_select(["MedicationRequest/draft-1"], [HALOPERIDOL_DRAFT]),
         lambda b: b["context"].update(selections=["draft-1"]), "context.selections[0]"),
        (ORDER_SELECT, lambda: order_select(["MedicationRequest/draft-1"], [HALOPERIDOL_DRAFT]),
         lambda b: b["context"].pop("draftOrders"), "context.draftOrders"),
        (ORDER_SELECT, lambda: order_select(["MedicationRequest/draft-1"], [HALOPERIDOL_DRAFT]),
         lambda b: b.update(hook="patient-view"), "hook"),
    ],
)
def test_malformed_requests_get_400_naming_the_field(client: FlaskClient, url: str, make: Any, mutate: Any,
                                                      field: str) -> None:
    body = make()
    mutate(body)
    response = client.post(url, json=body)
    assert response.status_code == 400
    assert issue(response.get_json())["field"] == field


def test_patient_view_ignores_members_it_does_not_define(client: FlaskClient) -> None:
    body = patient_view()
    body["context"]["draftOrders"] = "not a bundle"  # not a patient-view context member: ignored
    body["context"]["extension"] = {"com.example": {"x": 1}}
    assert cards(client, PATIENT_VIEW, body) == []


# --- patient-view card policy ----------------------------------------------------------------------------

def test_patient_view_is_quiet_for_a_patient_merely_on_an_antipsychotic(client: FlaskClient) -> None:
    scenario = fixtures.load_scenario("classic-nms")
    body = scenario.request_for("patient-view")
    for key in ("temperature", "vitals", "labs"):  # the same orders, no findings
        body["prefetch"][key] = {"resourceType": "Bundle", "type": "searchset"}
    assert cards(client, PATIENT_VIEW, body) == []
    body["prefetch"]["labs"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error",
                                                                             "code": "timeout"}]}
    assert cards(client, PATIENT_VIEW, body) == []  # incomplete data alone: no "check incomplete" card


def test_patient_view_classic_nms_critical_with_hold_and_no_delete(client: FlaskClient) -> None:
    scenario = fixtures.load_scenario("classic-nms")
    (card,) = cards(client, PATIENT_VIEW, scenario.request_for("patient-view"))
    assert card_problems(card) == []
    assert card["indicator"] == "critical" and card["summary"].startswith("Possible NMS: haloperidol")
    assert "draft order" not in card["detail"]
    assert actions(card, "delete") == []  # nothing is being ordered: nothing to remove
    (hold,) = actions(card, "update")
    ref = hold["resource"]["resourceType"] + "/" + hold["resource"]["id"]
    record = next(r for r in scenario.resources if f"{r['resourceType']}/{r.get('id')}" == ref)
    assert record["status"] == "active"
    assert hold["resource"]["status"] == "on-hold"
    assert "Possible neuroleptic malignant syndrome" in hold["resource"]["statusReason"]["text"]
    unchanged = {k: v for k, v in hold["resource"].items() if k not in ("status", "statusReason")}
    assert unchanged == {k: v for k, v in record.items() if k not in ("status", "statusReason")}
    suggestion = next(s for s in card["suggestions"] if s["actions"][0]["type"] == "update")
    assert suggestion["isRecommended"] is False and "on hold" in suggestion["label"]
    assert "cancel" not in str(card["suggestions"]).lower()
    assert card["selectionBehavior"] == "any"


def test_patient_view_warning_offers_labs_but_no_hold(client: FlaskClient) -> None:
    scenario = fixtures.load_scenario("early-nms")
    (card,) = cards(client, PATIENT_VIEW, scenario.request_for("patient-view"))
    assert card["indicator"] == "warning"
    assert actions(card, "update") == [] and actions(card, "delete") == []
    created = actions(card, "create")
    assert created and all(a["resource"]["resourceType"] == "ServiceRequest" for a in created)


def test_patient_view_never_holds_an_order_of_another_status_or_patient(client: FlaskClient) -> None:
    scenario = fixtures.load_scenario("classic-nms")
    body = scenario.request_for("patient-view")
    for entry in body["prefetch"]["medications"]["entry"]:
        if entry["resource"].get("status") == "active":
            entry["resource"]["status"] = "on-hold"  # already held: the card stays, the suggestion goes
    (card,) = cards(client, PATIENT_VIEW, body)
    assert card["indicator"] == "critical" and actions(card, "update") == []
    (before,) = cards(client, PATIENT_VIEW, scenario.request_for("patient-view"))
    assert card["uuid"] != before["uuid"]  # the hold shows in the data: a new card, not the old one repeated


# --- repeated cards ----------------------------------------------------------------------------------------

def test_the_third_opening_of_the_same_chart_shows_the_same_card(client: FlaskClient) -> None:
    scenario = fixtures.load_scenario("classic-nms")
    openings = []
    for i in range(3):
        body = scenario.request_for("patient-view")
        body["hookInstance"] = f"opening-{i}"
        openings.append(cards(client, PATIENT_VIEW, body))
    assert openings[0] == openings[1] == openings[2]  # same uuid, same text, same suggestions
    first = openings[0][0]
    feedback = {"feedback": [{"card": first["uuid"], "outcome": "overridden",
                              "outcomeTimestamp": "2026-11-24T12:00:00Z"}]}
    assert client.post(PATIENT_VIEW + "/feedback", json=feedback).status_code == 200
    body = scenario.request_for("patient-view")
    body["prefetch"]["temperature"]["entry"].append({"resource": {
        "resourceType": "Observation", "id": "new-fever", "status": "final",
        "subject": {"reference": f"Patient/{scenario.patient_id}"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
        "effectiveDateTime": "2026-11-24T11:30:00Z",
        "valueQuantity": {"value": 39.9, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"}}})
    (changed,) = cards(client, PATIENT_VIEW, body)
    assert changed["uuid"] != first["uuid"]  # new evidence: a new card, not silenced by feedback on the old
    assert "39.9 °C" in changed["summary"]


# --- order-select card policy -----------------------------------------------------------------------------

def test_order_select_selected_antagonist_gets_the_card_early(client: FlaskClient) -> None:
    body = order_select(["MedicationRequest/draft-1"], [HALOPERIDOL_DRAFT], prefetch=febrile_prefetch())
    (card,) = cards(client, ORDER_SELECT, body)
    signed = cards(client, ORDER_SIGN, hook_request(prefetch=febrile_prefetch()))[0]
    assert card["indicator"] == signed["indicator"] == "critical"
    assert card["summary"] == signed["summary"]
    assert [a["resourceId"] for a in actions(card, "delete")] == ["MedicationRequest/draft-1"]


def test_order_select_considers_only_the_selected_orders(client: FlaskClient) -> None:
    drafts = [HALOPERIDOL_DRAFT, AMOXICILLIN_DRAFT]
    only_amoxicillin = order_select(["MedicationRequest/draft-2"], drafts, prefetch=febrile_prefetch())
    assert cards(client, ORDER_SELECT, only_amoxicillin) == []  # the unselected haloperidol draft is not evidence
    both = order_select(["MedicationRequest/draft-2", "MedicationRequest/draft-1"], drafts,
                        prefetch=febrile_prefetch())
    (card,) = cards(client, ORDER_SELECT, both)
    assert [a["resourceId"] for a in actions(card, "delete")] == ["MedicationRequest/draft-1"]


def test_order_select_non_antagonist_gives_nothing_even_with_an_nms_pattern(client: FlaskClient) -> None:
    scenario = fixtures.load_scenario("classic-nms")  # the record shows a full NMS pattern
    body = scenario.request_for("order-select")
    amoxicillin = {**AMOXICILLIN_DRAFT, "subject": {"reference": f"Patient/{scenario.patient_id}"}}
    body["context"]["draftOrders"] = {"resourceType": "Bundle", "entry": [{"resource": amoxicillin}]}
    body["context"]["selections"] = ["MedicationRequest/draft-2"]
    assert cards(client, ORDER_SELECT, body) == []
    assert cards(client, PATIENT_VIEW, scenario.request_for("patient-view"))  # the chart covers it


def test_order_select_leaves_the_incomplete_check_to_signing(client: FlaskClient) -> None:
    prefetch = empty_prefetch()
    prefetch["labs"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    (info,) = cards(client, ORDER_SIGN, hook_request(prefetch=copy.deepcopy(prefetch)))
    assert info["indicator"] == "info"
    assert cards(client, ORDER_SELECT, order_select(["MedicationRequest/draft-1"], [HALOPERIDOL_DRAFT],
                                                    prefetch=prefetch)) == []


def test_order_select_previous_nms_warns_on_rechallenge(client: FlaskClient) -> None:
    scenario = fixtures.load_scenario("past-nms-rechallenge")
    (card,) = cards(client, ORDER_SELECT, scenario.request_for("order-select"))
    assert card["indicator"] == "warning" and "Previous NMS" in card["summary"]
    assert cards(client, PATIENT_VIEW, scenario.request_for("patient-view")) == []  # no finding in the chart


# --- 412, feedback, CORS ------------------------------------------------------------------------------

@pytest.mark.parametrize("url", [PATIENT_VIEW, ORDER_SELECT])
def test_no_prefetch_and_no_fhir_server_is_412(client: FlaskClient, url: str) -> None:
    body = patient_view(prefetch={}) if url == PATIENT_VIEW else order_select(
        ["MedicationRequest/draft-1"], [HALOPERIDOL_DRAFT], prefetch={})
    response = client.post(url, json=body)
    assert response.status_code == 412
    assert response.get_json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("url", [PATIENT_VIEW, ORDER_SELECT])
def test_feedback_and_cors_on_each_service(client: FlaskClient, url: str) -> None:
    item = {"card": "c1", "outcome": "overridden", "outcomeTimestamp": "2026-11-24T10:00:00Z"}
    response = client.post(url + "/feedback", json={"feedback": [item]})
    assert response.status_code == 200 and response.get_json() == {"received": 1, "new": 1}
    for path in (url, url + "/feedback"):
        preflight = client.options(path, headers={"Origin": "http://127.0.0.1:3000",
                                                  "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 200 and preflight.headers["Access-Control-Allow-Origin"] == "*"


# --- the reference sandbox's recorded requests -------------------------------------------------------

@pytest.mark.parametrize(("url", "name"), [(PATIENT_VIEW, "sandbox-patient-view-request.json"),
                                           (ORDER_SELECT, "sandbox-order-select-request.json")])
@responses.activate
def test_sandbox_requests_answer_200(client: FlaskClient, url: str, name: str) -> None:
    request = dataset_json(f"sandbox-requests/{name}")
    base = request["fhirServer"]
    responses.add(responses.GET, f"{base}/Patient/{request['context']['patientId']}",
                  json=request["prefetch"]["patient"])
    for resource in ("MedicationRequest", "Observation", "Condition", "AllergyIntolerance"):
        responses.add(responses.GET, f"{base}/{resource}", json={"resourceType": "Bundle", "type": "searchset"})
    response = client.post(url, json=request)
    assert response.status_code == 200
    assert response_problems(response.get_json()) == []
    sent = [c.request.url or "" for c in responses.calls]
    # its "patient" key is used as sent; the six other keys are fetched, plus the two queries for readings from
    # before the vitals' and labs' windows (as for order-sign, tests/protocol/test_protocol.py)
    keys = len(client.application.extensions["nms_cds"].services["nms-order-sign"].templates)
    assert len(sent) == keys - 1 + 2 and not any("/Patient/" in u for u in sent)


# --- the typed wire models are the contract ---------------------------------------------------------------

@pytest.mark.parametrize("hook", fixtures.HOOKS)
def test_every_scenario_answer_fits_the_typed_response_model(client: FlaskClient, hook: str) -> None:
    from cds_service.protocol import models as wire

    for scenario in fixtures.load_scenarios():
        response = client.post(f"/cds-services/nms-{hook}", json=scenario.request_for(hook))
        answer = response.get_json()
        model = wire.HookResponse.model_validate(answer)
        assert model.model_dump(exclude_none=True) == answer, scenario.id  # nothing the model does not know
    discovery = client.get("/cds-services").get_json()
    assert wire.Discovery.model_validate(discovery).model_dump(exclude_none=True) == discovery


def test_order_select_with_service_requests_only_gives_nothing(client: FlaskClient) -> None:
    """The sandbox's PAMA screen fires order-select with ServiceRequest orders: not a drug, no card."""
    imaging = {"resourceType": "ServiceRequest", "id": "sr-1", "status": "draft", "intent": "order",
               "subject": {"reference": "Patient/p1"}, "code": {"text": "CT head"}}
    body = order_select(["ServiceRequest/sr-1"], [imaging, HALOPERIDOL_DRAFT], prefetch=febrile_prefetch())
    assert cards(client, ORDER_SELECT, body) == []
