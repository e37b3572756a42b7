"""The quiet-period policy (services/quiet.py) and the override reasons as data (services/override_reasons.py)."""

from __future__ import annotations

import csv
from dataclasses import replace

import pytest

from cds_service.devtools import fixtures
from cds_service.protocol.parse import parse_hook_request
from cds_service.services import override_reasons
from cds_service.services.quiet import Answered, Decisive, decide, news
from tests.conftest import app_for, make_settings

HOUR = 3600.0
BASE = Decisive(indicator="warning", criteria=frozenset({"exposure"}), findings=frozenset({"iron-low-or-falling"}),
                febrile=frozenset({"2026-11-24T04:00:00+00:00"}), ck_peak=500.0, drugs=frozenset({"olanzapine"}))


def answered(d: Decisive = BASE, at: float = 0.0, uuid: str = "card-a") -> Answered:
    return Answered(uuid, d, at, "overridden")


def test_the_same_decisive_facts_are_suppressed_until_the_period_ends() -> None:
    decision = decide(BASE, [answered()], now=2 * HOUR, period_seconds=24 * HOUR)
    assert decision.suppress and decision.until == 24 * HOUR and decision.answered is not None
    assert "card-a" in decision.reason
    assert not decide(BASE, [answered()], now=24 * HOUR + 1, period_seconds=24 * HOUR).suppress


def test_a_period_of_zero_or_no_answer_never_suppresses() -> None:
    assert not decide(BASE, [answered()], now=10.0, period_seconds=0).suppress
    assert not decide(BASE, [], now=10.0, period_seconds=24 * HOUR).suppress


@pytest.mark.parametrize(("change", "why"), [
    ({"indicator": "critical"}, "verdict worsened (warning -> critical)"),
    ({"criteria": frozenset({"exposure", "ck"})}, "criterion newly met: ck"),
    ({"findings": frozenset({"iron-low-or-falling", "leukocytosis"})}, "finding newly present: leukocytosis"),
    ({"febrile": frozenset({"2026-11-24T04:00:00+00:00", "2026-11-24T10:00:00+00:00"})}, "1 new febrile reading(s)"),
    ({"ck_peak": 600.0}, "higher CK"),
    ({"drugs": frozenset({"olanzapine", "haloperidol"})}, "new drug exposure"),
    ({"history": True}, "previous NMS newly documented"),
])
def test_each_decisive_change_shows_the_card_again(change: dict[str, object], why: str) -> None:
    now = replace(BASE, **change)  # type: ignore[arg-type]
    assert news(now, BASE) == [why]
    decision = decide(now, [answered()], now=HOUR, period_seconds=24 * HOUR)
    assert not decision.suppress and decision.reason == why


@pytest.mark.parametrize("change", [
    {"indicator": "info"},  # better, not worse
    {"ck_peak": 400.0},  # a lower CK
    {"criteria": frozenset()},  # a criterion no longer met
    {"febrile": frozenset()},  # an old febrile reading left the window
    {"findings": frozenset()},
])
def test_what_is_not_decisive_stays_quiet(change: dict[str, object]) -> None:
    assert decide(replace(BASE, **change), [answered()], now=HOUR,  # type: ignore[arg-type]
                  period_seconds=24 * HOUR).suppress


def test_any_answered_card_that_covers_the_facts_suppresses() -> None:
    worse = replace(BASE, indicator="critical", ck_peak=900.0)
    older, newer = answered(BASE, at=0.0, uuid="old"), answered(worse, at=HOUR, uuid="new")
    decision = decide(worse, [older, newer], now=2 * HOUR, period_seconds=24 * HOUR)
    assert decision.suppress and decision.answered == newer and decision.until == 25 * HOUR


def test_feedback_from_the_future_beyond_clock_skew_is_ignored() -> None:
    assert not decide(BASE, [answered(at=10 * HOUR)], now=0.0, period_seconds=24 * HOUR).suppress


def test_decisive_facts_round_trip_and_fingerprint_without_patient_data() -> None:
    assert Decisive.from_json(BASE.to_json()) == BASE
    assert BASE.fingerprint.startswith("decisive:") and BASE.fingerprint != replace(BASE, ck_peak=501.0).fingerprint
    with pytest.raises(ValueError):
        Decisive.from_json("not json")


def test_decisive_facts_of_a_fixture_card() -> None:
    """early-nms: one febrile reading, CK 2.5 x ULN, falling iron: the facts the card shows, no patient id."""
    scenario = fixtures.load_scenario("early-nms")
    with app_for(make_settings()) as app:
        rt = app.extensions["nms_cds"]
        service = rt.services[rt.settings.patient_view_service_id]
        response, report = service.call(parse_hook_request(scenario.request_for("patient-view"),
                                                           expected_hook="patient-view"))
    facts = report.decisive
    assert response["cards"] and facts is not None and facts.indicator == "warning"
    assert facts.drugs == {"olanzapine"} and facts.ck_peak == 500.0 and len(facts.febrile) == 1
    assert "exposure" in facts.criteria and "hyperthermia" not in facts.criteria
    assert scenario.patient_id not in facts.to_json() and "Observation/" not in facts.to_json()


# --- override reasons ---------------------------------------------------------------------------------------------

HL7 = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"


def test_override_reasons_are_data_with_a_source_and_standard_codes_where_one_fits() -> None:
    with override_reasons.DATA.open(encoding="utf-8") as f:
        rows = list(csv.DictReader((line for line in f if not line.startswith("#")), delimiter="\t"))
    assert [r["code"] for r in rows] == [c for c, _ in override_reasons.OVERRIDE_REASONS]
    for row in rows:
        assert row["source"].strip()
        if row["standard_code"]:
            assert row["standard_system"] == HL7
            assert "https://build.fhir.org/ig/HL7/cds-hooks/" in row["source"]
    standard = {r["code"]: r["standard_code"] for r in rows if r["standard_code"]}
    assert standard == {"nms-excluded-at-bedside": "patient-ineligible", "benefit-outweighs-risk": "risk-benefit-ratio",
                        "already-managed": "indication-order-exists"}
    assert len(set(standard.values())) == len(standard)  # one-to-one: feedback maps back without loss


def test_each_reason_is_offered_as_one_coding_standard_where_it_fits() -> None:
    offered = override_reasons.offered(withdrawal_only=False)
    assert [(o.system, o.code) for o in offered] == [
        (HL7, "patient-ineligible"), (override_reasons.OVERRIDE_SYSTEM, "other-cause-identified"),
        (HL7, "risk-benefit-ratio"), (HL7, "indication-order-exists"),
        (override_reasons.OVERRIDE_SYSTEM, "data-incorrect")]
    withdrawal = override_reasons.offered(withdrawal_only=True)
    assert withdrawal[2].display.startswith("Stopping the dopaminergic drug") and withdrawal[2].code == offered[2].code


@pytest.mark.parametrize(("system", "code", "expected"), [
    (HL7, "risk-benefit-ratio", "benefit-outweighs-risk"),
    (override_reasons.OVERRIDE_SYSTEM, "benefit-outweighs-risk", "benefit-outweighs-risk"),
    (None, "patient-ineligible", "nms-excluded-at-bedside"),
    ("http://example.org/ehr-reasons", "risk-benefit-ratio", "risk-benefit-ratio"),  # another system: as given
    (HL7, "limited-time", "limited-time"),  # a 3.0 code the card did not offer: kept as given
    (None, None, None),
])
def test_feedback_reason_maps_either_code_to_the_project_reason(system: str | None, code: str | None,
                                                                  expected: str | None) -> None:
    assert override_reasons.reason_code(system, code) == expected
