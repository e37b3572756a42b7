"""Issue 11: time order, other causes weighed, only this patient, every record of exposure, units and codes.

Real values, and records rebuilt from the issue's descriptions (the sepsis fixture with a haloperidol draft,
the German kidney-transplant record, a prefetch Bundle that also holds another patient's fever and CK).
"""

from __future__ import annotations

import copy
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient

from cds_service.clinical import ClinicalInput, assess
from cds_service.clinical.model import Coding, HistoryInput, MedicationInput, ObservationInput
from cds_service.clinical.valuesets import ATC, ICD10CM, RXNORM, SNOMED, load
from cds_service.config import Settings
from cds_service.devtools import fixtures
from tests.conftest import make_settings
from tests.helpers.cdshooks_check import response_problems

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
URL = "/cds-services/nms-order-sign"
BFARM = "http://fhir.de/CodeSystem/bfarm/atc"
VS = load()


@pytest.fixture
def settings() -> Settings:
    return make_settings(fixed_now=fixtures.ANCHOR)


def ago(hours: float) -> datetime:
    return NOW - timedelta(hours=hours)


def halo(hours: float | None, *, draft: bool = False, kind: str = "request", status: str = "active",
         codings: tuple[Coding, ...] = (Coding(RXNORM, "5093"),), names: tuple[str, ...] = ()) -> MedicationInput:
    return MedicationInput("MedicationRequest/d" if draft else f"MedicationRequest/r{hours}", draft,
                           "draft" if draft else status, codings, names,
                           authored=None if hours is None else ago(hours), kind=kind)  # type: ignore[arg-type]


def temp(hours: float, value: float) -> ObservationInput:
    return ObservationInput(f"Observation/t{hours}", "final", ("8310-5",), value, "Cel", ago(hours))


def ck(hours: float, value: float, uln: float = 200) -> ObservationInput:
    return ObservationInput(f"Observation/ck{hours}", "final", ("2157-6",), value, "U/L", ago(hours), None, uln, "U/L")


def iron(hours: float, value: float) -> ObservationInput:
    return ObservationInput(f"Observation/fe{hours}", "final", ("14798-3",), value, "umol/L", ago(hours))


def run(meds: list[MedicationInput], observations: list[ObservationInput], **kw: Any) -> Any:
    return assess(ClinicalInput(now=NOW, medications=tuple(meds), observations=tuple(observations), **kw))


FEVER_CK = [temp(30, 38.6), temp(10, 39.2), ck(12, 2400)]


# --- 1. time order -------------------------------------------------------------------------------------

def test_draft_alone_never_explains_findings_already_there() -> None:
    a = run([halo(None, draft=True)], FEVER_CK)
    assert a.indicator is None
    assert a.criterion("exposure").met is False and "before onset" in a.criterion("exposure").label
    assert a.findings_before_exposure is True
    assert a.onset == ago(30) and a.onset_kind == "fever"


def test_exposure_before_onset_keeps_the_critical_card_and_gives_the_time_line() -> None:
    a = run([halo(48), halo(None, draft=True)], FEVER_CK)
    assert a.indicator == "critical"
    assert a.first_exposure is not None and a.first_exposure.authored == ago(48)
    assert a.hours_exposure_to_fever == pytest.approx(18)


def test_order_started_after_onset_does_not_explain_it() -> None:
    assert run([halo(20)], FEVER_CK).indicator is None


def test_ck_rise_before_fever_is_the_onset() -> None:
    a = run([halo(60)], [ck(50, 3000), temp(30, 38.6), temp(10, 39.2)])
    assert (a.onset, a.onset_kind) == (ago(50), "ck")
    assert a.indicator == "critical"


def test_afebrile_ck_rise_before_the_first_dose_is_set_aside() -> None:
    # the raised CK before the first dose is not the drug's doing; the fever after it opens the episode, judged
    # with its own CK values only (docs/clinical-rules.md "Time order")
    a = run([halo(40)], [ck(50, 3000), temp(30, 38.6), temp(10, 39.2)])
    assert (a.onset, a.onset_kind) == (ago(30), "fever")
    assert [r.value for r in a.ck_set_aside] == [3000] and a.criterion("ck").met is None
    assert a.indicator == "warning"


def test_episode_reaches_back_through_febrile_readings() -> None:
    # febrile every 20 h since -90 h: the episode began before haloperidol at -60 h although the window
    # (72 h) only starts at -72 h
    readings = [temp(h, 38.8) for h in (90, 70, 50, 30, 10)]
    assert run([halo(60)], [*readings, ck(12, 2400)]).indicator is None
    assert run([halo(100)], [*readings, ck(12, 2400)]).indicator == "critical"


def test_depot_and_withdrawal_windows_count_from_onset() -> None:
    depot = MedicationInput("MedicationRequest/depot", False, "completed", (Coding(RXNORM, "858054"),),
                            authored=ago(21 * 24))
    assert run([depot], FEVER_CK).indicator == "critical"
    levodopa = MedicationInput("MedicationRequest/ld", False, "stopped", (), ("levodopa 100 mg",),
                               authored=ago(400), ended=ago(80))
    assert run([levodopa], FEVER_CK).indicator == "critical"  # stopped 50 h before onset (< 7 days)


# --- 2. other causes -----------------------------------------------------------------------------------

def test_infection_turns_fever_with_low_iron_into_a_warning() -> None:
    meds = [halo(60), MedicationInput("MedicationAdministration/abx", False, "completed", (Coding(ATC, "J01DD04"),),
                                      ("ceftriaxone 2 g",), authored=ago(20), kind="administration")]
    observations = [temp(30, 38.6), temp(10, 39.0), iron(12, 6.0), ck(12, 300)]
    pneumonia = HistoryInput("condition", (Coding(SNOMED, "233604007"),), "Pneumonia", ago(34), "confirmed",
                             clinical_status="active")
    a = run(meds, observations, history=(pneumonia,))
    assert a.indicator == "warning"
    infection = next(c for c in a.other_causes if c.cause == "infection")
    assert infection.found is True and "Pneumonia" in infection.evidence[0] and "ceftriaxone" in infection.possible[0]
    # an empiric antimicrobial alone is a possible infection: it does not close the iron route
    a = run(meds, observations)
    infection = next(c for c in a.other_causes if c.cause == "infection")
    assert infection.found is False and "without a documented infection" in infection.possible[0]
    assert a.indicator == "critical"


def test_ck_at_four_times_uln_stays_critical_despite_infection() -> None:
    sepsis = HistoryInput("condition", (Coding(ICD10CM, "A41.9"),), "Sepsis", ago(30), "confirmed",
                          clinical_status="active")
    a = run([halo(60)], FEVER_CK, history=(sepsis,))
    assert a.indicator == "critical"
    assert [c.cause for c in a.other_causes if c.found] == ["infection"]


def test_other_causes_found_from_structured_data() -> None:
    meds = [
        MedicationInput("MedicationRequest/s1", False, "active", (), ("sertraline 50 mg",), authored=ago(100)),
        MedicationInput("MedicationRequest/s2", False, "active", (), ("tramadol 50 mg",), authored=ago(30)),
        MedicationInput("MedicationAdministration/sux", False, "completed", (), ("succinylcholine 100 mg",),
                        authored=ago(6), kind="administration"),
        MedicationInput("MedicationRequest/ac", False, "active", (), ("diphenhydramine 50 mg",), authored=ago(50)),
    ]
    heat = HistoryInput("condition", (Coding(ICD10CM, "T67.01XA"),), "Heatstroke", ago(20), "confirmed",
                        clinical_status="active")
    culture = ObservationInput("Observation/bc", "final", ("600-7",), None, None, ago(20),
                               value_codes=(Coding(SNOMED, "10828004"),))
    a = run(meds, [culture], history=(heat,))
    found = {c.cause for c in a.other_causes if c.found}
    assert {"infection", "serotonin-syndrome", "malignant-hyperthermia", "heat-illness", "anticholinergic"} <= found


def test_resolved_infection_long_ago_is_not_evidence() -> None:
    old = HistoryInput("condition", (Coding(SNOMED, "840539006"),), "COVID-19", ago(24 * 200), "confirmed",
                       clinical_status="resolved", abated=ago(24 * 180))
    a = run([], [], history=(old,))
    assert next(c for c in a.other_causes if c.cause == "infection").found is False


# --- 4. every record of exposure -----------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "status", "counts"), [
    ("administration", "completed", True), ("administration", "not-done", False),
    ("administration", "entered-in-error", False), ("statement", "active", True),
    ("statement", "entered-in-error", False), ("statement", "not-taken", False),
])
def test_administrations_and_statements_count_like_orders(kind: str, status: str, counts: bool) -> None:
    med = halo(48, kind=kind, status=status)
    assert (run([med], FEVER_CK).indicator == "critical") is counts


@pytest.mark.parametrize(("system", "code", "ingredient"), [
    (BFARM, "N05AH04", "quetiapine"), (ATC, "N05AX08", "risperidone"), (BFARM, "A03FA01", "metoclopramide"),
    (ATC, "N07XX06", "tetrabenazine"), (BFARM, "N05AD01", "haloperidol"),
])
def test_atc_codes_are_recognised(system: str, code: str, ingredient: str) -> None:
    a = run([halo(48, codings=(Coding(system, code),))], FEVER_CK)
    assert a.indicator == "critical" and a.exposures[0].ingredient == ingredient
    assert a.exposures[0].matched_by == "atc"


def test_lithium_and_non_d2_atc_codes_are_not_triggers() -> None:
    for code in ("N05AN01", "N05AX17", "N05AX50", "N04BD02"):  # lithium, pimavanserin, xanomeline, rasagiline
        assert run([halo(48, codings=(Coding(ATC, code),))], FEVER_CK).indicator is None, code


@pytest.mark.parametrize(("text", "ingredient"), [
    ("Haldol 5 mg tablet", "haloperidol"), ("Zyprexa 10 mg", "olanzapine"), ("Quetiapin 100 mg", "quetiapine"),
    ("Risperidon 2 mg", "risperidone"), ("Metoclopramid 10 mg", "metoclopramide"), ("Halopéridol", "haloperidol"),
])
def test_brand_and_national_names_are_recognised(text: str, ingredient: str) -> None:
    a = run([halo(48, codings=(), names=(text,))], FEVER_CK)
    assert a.indicator == "critical" and a.exposures[0].ingredient == ingredient


# --- 5. units and codes --------------------------------------------------------------------------------

@pytest.mark.parametrize(("code", "value", "unit", "concept", "canonical"), [
    ("8867-4", 110, "1/min", "heart-rate", 110), ("8867-4", 110, "beats/minute", "heart-rate", 110),
    ("6690-2", 14.2, "K/uL", "wbc", 14.2), ("6690-2", 14.2, "10^3/uL", "wbc", 14.2),
    ("2157-6", 900, "U/l", "creatine-kinase", 900), ("2157-6", 900, "IU/L", "creatine-kinase", 900),
    ("59826-8", 90, "umol/L", "creatinine", 90), ("49498-9", 12, "10*9/L", "wbc", 12),
    ("71426-1", 2.0, "mg/dL", "crp", 20), ("32713-0", 4.1, "mEq/L", "potassium", 4.1),
    ("8310-5", 101.3, "°F", "body-temperature", 38.5), ("8480-6", 150, None, "systolic-bp", 150),
])
def test_real_unit_spellings_and_codes_are_read(code: str, value: float, unit: str | None, concept: str,
                                                 canonical: float) -> None:
    a = run([], [ObservationInput("Observation/x", "final", (code,), value, unit, ago(5))])
    assert a.quality.used == 1 and a.quality.unusable == 0
    assert a.readings[concept][0].value == pytest.approx(canonical, abs=0.05)


def test_units_never_guessed() -> None:
    # K is kelvin in UCUM, and only a BP code fixes a missing unit
    a = run([], [ObservationInput("Observation/x", "final", ("8310-5",), 39, "K", ago(5)),
                 ObservationInput("Observation/y", "final", ("8867-4",), 110, None, ago(5))])
    assert a.quality.unusable == 2


def test_ck_mb_and_molar_crp_are_not_read_as_ck_or_crp() -> None:
    assert VS.observation("32673-6") is None and VS.observation("76485-2") is None


def test_creatinine_resulted_under_another_code_is_not_suggested() -> None:
    creatinine = ObservationInput("Observation/cr", "final", ("59826-8",), 90, "umol/L", ago(5))
    a = run([halo(48)], [*FEVER_CK, creatinine])
    assert "2160-0" not in a.missing_labs
    unusable = ObservationInput("Observation/cr", "final", ("59826-8",), 90, "furlong", ago(5))
    assert "2160-0" not in run([halo(48)], [*FEVER_CK, unusable]).missing_labs  # done is done
    assert "2160-0" in run([halo(48)], FEVER_CK).missing_labs


# --- through the service: fixtures rebuilt from the issue ----------------------------------------------

def _post(client: FlaskClient, request: dict[str, Any]) -> dict[str, Any]:
    response = client.post(URL, json=request)
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    assert response_problems(body) == []
    return body


def test_sepsis_fixture_with_haloperidol_draft_gets_no_card(client: FlaskClient) -> None:
    assert _post(client, fixtures.load_scenario("mimic-sepsis-haloperidol-draft").request)["cards"] == []


def test_german_kidney_transplant_record_gets_no_card(client: FlaskClient) -> None:
    assert _post(client, fixtures.load_scenario("mimic-neutropenic-fever-german").request)["cards"] == []


def test_card_states_time_line_and_other_causes(client: FlaskClient) -> None:
    (card,) = _post(client, fixtures.load_scenario("other-cause-infection").request)["cards"]
    assert card["indicator"] == "warning"
    assert "- haloperidol oral ordered 18 Nov 12:00, 112 h before onset" in card["detail"]  # the time line
    assert "Infection or sepsis: **found**" in card["detail"] and "ceftriaxone" in card["detail"]
    assert "Could not be checked:" in card["detail"]


# --- 3. only this patient ------------------------------------------------------------------------------

def _foreign(resource: dict[str, Any]) -> dict[str, Any]:
    other = copy.deepcopy(resource)
    other["id"] = "foreign-" + other["id"]
    other["subject"] = {"reference": "Patient/somebody-else"}
    return other


def test_other_patients_data_never_becomes_evidence(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    well = fixtures.load_scenario("mimic-entered-in-error").request  # olanzapine active, no valid fever/CK
    febrile = fixtures.load_scenario("classic-nms").request["prefetch"]
    request = copy.deepcopy(well)
    for key in ("temperature", "labs", "vitals"):
        entries = [{"resource": _foreign(e["resource"])} for e in febrile[key].get("entry", [])]
        request["prefetch"][key].setdefault("entry", []).extend(entries)
    request["prefetch"]["patient"] = {**request["prefetch"]["patient"], "id": "somebody-else", "gender": "female"}
    foreign_draft = _foreign(fixtures.load_scenario("classic-nms").draft_orders[0])
    request["context"]["draftOrders"]["entry"].append({"resource": foreign_draft})
    with caplog.at_level(logging.WARNING, logger="cds_service.scope"):
        cards = _post(client, request)["cards"]
    assert cards == [] or all(c["indicator"] not in ("critical", "warning") for c in cards)
    text = "\n".join(c["detail"] for c in cards)
    assert "foreign-" not in text
    events = [r for r in caplog.records if getattr(r, "event", None) == "data-integrity"]
    assert events and "Observation" in events[0].reason and "foreign" not in events[0].getMessage()


def test_dropped_resources_are_counted_in_the_card(client: FlaskClient) -> None:
    request = copy.deepcopy(fixtures.load_scenario("classic-nms").request)
    entries = request["prefetch"]["temperature"]["entry"]
    entries.append({"resource": _foreign(entries[0]["resource"])})
    (card,) = _post(client, request)["cards"]
    assert card["indicator"] == "critical"
    assert "1 resource(s) of another patient dropped and not used (1 Observation)" in card["detail"]


def test_reference_forms() -> None:
    from cds_service.fhir.scope import belongs

    pid = "p1"
    assert belongs({"resourceType": "Observation", "subject": {"reference": "Patient/p1"}}, pid)
    assert belongs({"resourceType": "Observation", "subject": {"reference": "https://x/fhir/Patient/p1"}}, pid,
                   "https://x/fhir")  # absolute on the FHIR server in use
    assert belongs({"resourceType": "Observation", "subject": {"reference": "Patient/p1/_history/3"}}, pid)
    assert not belongs({"resourceType": "Observation", "subject": {"display": "no reference"}}, pid)
    assert belongs({"resourceType": "Medication", "id": "m"}, pid)
    assert not belongs({"resourceType": "Observation", "subject": {"reference": "Patient/p2"}}, pid)
    assert not belongs({"resourceType": "Observation", "subject": {"reference": "Group/g"}}, pid)
    assert not belongs({"resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/p10"}}, pid)
    assert not belongs({"resourceType": "Patient", "id": "p2"}, pid)
