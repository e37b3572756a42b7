"""Every fixture scenario through the service (prefetch path): indicator, evidence and suggestions.

``fhir_fixtures/scenarios/*/expected.json`` is the specification; the service runs with its clock pinned
to the fixtures' anchor instant.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from cds_service.clinical import assess
from cds_service.clinical.model import ClinicalInput
from cds_service.config import Settings
from cds_service.devtools import fixtures
from tests.conftest import make_settings
from tests.helpers.cdshooks_check import response_problems

SCENARIOS = fixtures.load_scenarios()
URL = "/cds-services/nms-order-sign"


@pytest.fixture
def settings() -> Settings:
    return make_settings(fixed_now=fixtures.ANCHOR)


def test_the_library_covers_the_required_cases() -> None:
    ids = {s.id for s in SCENARIOS}
    required = {"classic-nms", "early-nms", "mimic-sepsis-no-antipsychotic", "mimic-im-ck-afebrile",
                "mimic-old-episode", "mimic-entered-in-error", "units-us-conventional", "depot-paliperidone",
                "metoclopramide", "dopaminergic-withdrawal", "past-nms-rechallenge", "contained-medication",
                "sandbox-quirks", "administration-only-haloperidol", "atc-german-record", "brand-name-free-text",
                "mimic-sepsis-haloperidol-draft", "mimic-neutropenic-fever-german", "other-cause-infection"}
    assert required <= ids
    assert {s.expected["indicator"] for s in SCENARIOS} == {"critical", "warning", None}


def _post(client: FlaskClient, scenario: fixtures.Scenario) -> dict[str, Any]:
    response = client.post(URL, json=scenario.request)
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    assert response_problems(body) == []
    return body


@pytest.mark.parametrize("hook", fixtures.HOOKS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_each_hook_gives_its_expected_verdict(client: FlaskClient, scenario: fixtures.Scenario, hook: str) -> None:
    """``expected.json`` ``hooks``: the verdict of each hook at the scenario's moment."""
    expected = scenario.expected["hooks"][hook]
    response = client.post(f"/cds-services/nms-{hook}", json=scenario.request_for(hook))
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert response_problems(body) == []
    assert [c["indicator"] for c in body["cards"]] == ([expected] if expected else [])
    for card in body["cards"]:
        kinds = {a["type"] for s in card.get("suggestions", []) for a in s["actions"]}
        if hook == "patient-view":
            assert "delete" not in kinds  # nothing is being ordered
        if hook != "patient-view":
            assert "update" not in kinds  # holds are offered from the chart only


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_scenario_behaves_as_its_table_says(client: FlaskClient, scenario: fixtures.Scenario) -> None:
    expected = scenario.expected
    cards = _post(client, scenario)["cards"]
    if expected["indicator"] is None:
        assert cards == []
        return
    (card,) = cards
    assert card["indicator"] == expected["indicator"]
    text = card["summary"] + "\n" + card["detail"]
    for drug in expected["drugs"]:
        assert drug in text
    assert f"| **Score from the record** | | **{expected['iec_points']} of 63** |" in card["detail"]
    evidence = expected.get("evidence", {})
    if "tmax_cel" in evidence:
        assert f"{evidence['tmax_cel']:.1f} °C" in text
    if "ck_peak_u_l" in evidence:
        assert f"{evidence['ck_peak_u_l']:,} U/L" in text
    if "ck_uln_u_l" in evidence:
        assert f"ULN {evidence['ck_uln_u_l']:,} U/L" in text
    if "iron_min_umol_l" in evidence:
        assert f"serum iron {evidence['iron_min_umol_l']:.1f} µmol/L" in text
    if "wbc_max_10e9_l" in evidence:
        assert f"WBC {evidence['wbc_max_10e9_l']:.1f} ×10⁹/L" in text
    deletes = [a.get("resourceId") for s in card.get("suggestions", []) for a in s["actions"] if a["type"] == "delete"]
    if expected["suggest_delete_draft"]:
        assert deletes == [expected["suggest_delete_draft"]]
    else:
        assert deletes == []
    assert "NMS diagnosed" not in text and "diagnosis of NMS" not in text


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_criteria_and_points_match(client: FlaskClient, scenario: fixtures.Scenario) -> None:
    cards = _post(client, scenario)["cards"]
    if not cards:
        return
    detail = cards[0]["detail"]
    table = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1]
             for line in detail.splitlines() if line.startswith("| ") and " | " in line[2:]}
    met = {label for label, cell in table.items() if cell == "**yes**"}
    names = {"Dopamine": "exposure", "Dopaminergic": "exposure", "Hyperthermia": "hyperthermia", "CK": "ck",
             "Sympathetic": "autonomic", "Hypermetabolism": "hypermetabolism"}
    got = sorted(names[label.split(" ")[0].rstrip(",:")] for label in met)
    assert got == sorted(scenario.expected["criteria"])


def test_classic_card_text(client: FlaskClient) -> None:
    card = _post(client, fixtures.load_scenario("classic-nms"))["cards"][0]
    assert card["summary"] == "Possible NMS: haloperidol + T 39.4 °C ×3 + CK 9,400 U/L (47×ULN) + iron 5.4 µmol/L"
    assert "haloperidol: IM draft order" in card["detail"]  # the route of the drafted dose
    assert card["detail"].startswith("**Now: assess rigidity and mental status at the bedside")
    labels = [s["label"] for s in card["suggestions"]]
    assert labels[0] == "Remove the draft haloperidol order"
    assert card["suggestions"][0]["isRecommended"] is True
    assert len(card["overrideReasons"]) >= 3


def test_iron_variant_suggests_ordering_ck(client: FlaskClient) -> None:
    card = _post(client, fixtures.load_scenario("iron-pattern"))["cards"][0]
    creates = [a["resource"] for s in card["suggestions"] for a in s["actions"] if a["type"] == "create"]
    codes = {r["code"]["coding"][0]["code"] for r in creates}
    assert "2157-6" in codes
    for resource in creates:
        assert resource["resourceType"] == "ServiceRequest" and resource["status"] == "draft"
        assert resource["subject"]["reference"] == "Patient/" + fixtures.load_scenario("iron-pattern").patient_id


def test_im_artefact_is_explained(client: FlaskClient) -> None:
    card = _post(client, fixtures.load_scenario("mimic-im-ck-afebrile"))["cards"][0]
    assert card["indicator"] == "warning"
    assert "injections raise CK by themselves" in card["detail"]


def test_entered_in_error_values_are_counted(client: FlaskClient) -> None:
    scenario = fixtures.load_scenario("mimic-entered-in-error")
    assert _post(client, scenario)["cards"] == []


def test_assessment_is_deterministic() -> None:
    """The pure core gives the same answer twice for the same input (no hidden clock or state)."""
    from cds_service.clinical.model import Coding, MedicationInput

    inp = ClinicalInput(now=fixtures.ANCHOR, medications=(
        MedicationInput("MedicationRequest/x", True, "draft", (Coding("http://www.nlm.nih.gov/research/umls/rxnorm",
                                                                      "5093"),)),))
    assert assess(inp) == assess(inp)
