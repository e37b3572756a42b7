"""Edges of each clinical rule: thresholds, windows, units, exposure matching and the indicator policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cds_service.clinical import ClinicalInput, assess
from cds_service.clinical.model import Coding, HistoryInput, MedicationInput, ObservationInput
from cds_service.clinical.valuesets import ICD10CM, RXNORM, SNOMED, load

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
HALOPERIDOL_IN = "5093"
OLANZAPINE_10MG = "314154"  # olanzapine 10 MG Oral Tablet (sandbox order-select)
PIMAVANSERIN_IN = "1791685"


def ago(hours: float) -> datetime:
    return NOW - timedelta(hours=hours)


def med(code: str | None = HALOPERIDOL_IN, *, draft: bool = False, status: str = "active", hours: float = 60,
        names: tuple[str, ...] = (), route: str | None = None, ended: float | None = None,
        ref: str | None = "MedicationRequest/m1") -> MedicationInput:
    return MedicationInput(
        ref=ref, is_draft=draft, status="draft" if draft else status,
        codings=(Coding(RXNORM, code),) if code else (), names=names,
        route=(Coding(SNOMED, route),) if route else (), authored=ago(hours),
        ended=ago(ended) if ended is not None else None)


def obs(code: str, value: float, unit: str, hours: float, *, status: str = "final",
        high: float | None = None) -> ObservationInput:
    return ObservationInput(f"Observation/{code}-{hours}", status, (code,), value, unit, ago(hours), None, high, None)


def temps(*values: float, start: float = 30, unit: str = "Cel") -> list[ObservationInput]:
    return [obs("8310-5", v, unit, start - 6 * i) for i, v in enumerate(values)]


def run(meds: list[MedicationInput], observations: list[ObservationInput], **kw: object) -> object:
    return assess(ClinicalInput(now=NOW, medications=tuple(meds), observations=tuple(observations), **kw))  # type: ignore[arg-type]


# --- hyperthermia ------------------------------------------------------------------------------------

def test_hyperthermia_needs_two_readings_strictly_above_38() -> None:
    a = run([med()], temps(38.0, 38.0, 38.0))
    assert a.criterion("hyperthermia").met is False
    a = run([med()], temps(38.1, 37.0))
    assert a.criterion("hyperthermia").met is False
    a = run([med()], temps(38.1, 38.2))
    hyper = a.criterion("hyperthermia")
    assert hyper.met is True and hyper.points == 18


def test_fahrenheit_is_converted_and_100_4_is_not_febrile() -> None:
    a = run([med()], temps(100.4, 100.4, unit="[degF]"))
    assert a.criterion("hyperthermia").met is False
    a = run([med()], temps(102.2, 103.1, unit="[degF]"))
    hyper = a.criterion("hyperthermia")
    assert hyper.met is True
    assert max(r.value for r in hyper.evidence) == pytest.approx(39.5, abs=0.01)
    assert "39.5 °C" in hyper.summary


def test_readings_outside_72h_do_not_count() -> None:
    a = run([med()], temps(39.0, 39.2, start=80))
    assert a.criterion("hyperthermia").met is None  # no temperature in the window at all
    assert a.indicator is None


def test_unknown_unit_and_non_final_are_counted_not_used() -> None:
    observations = [obs("8310-5", 39.0, "K", 10), obs("8310-5", 39.0, "Cel", 8, status="preliminary"),
                    obs("8310-5", 39.5, "Cel", 6, status="entered-in-error"), obs("8310-5", 36.8, "Cel", 4)]
    a = run([med()], observations)
    assert (a.quality.unusable, a.quality.not_final, a.quality.entered_in_error, a.quality.used) == (1, 1, 1, 1)
    assert a.indicator is None


# --- creatine kinase ---------------------------------------------------------------------------------

def test_ck_uses_lab_reference_range_and_4x_boundary() -> None:
    a = run([med()], [obs("2157-6", 799, "U/L", 10, high=200)])
    assert a.criterion("ck").met is False
    a = run([med()], [obs("2157-6", 800, "U/L", 10, high=200)])
    ck = a.criterion("ck")
    assert ck.met is True and ck.points == 10
    assert "4.0 × ULN 200 U/L (lab reference range)" in ck.summary


@pytest.mark.parametrize(("sex", "uln"), [("female", 176), ("male", 336), (None, 336)])
def test_ck_fallback_uln_is_sex_specific(sex: str | None, uln: int) -> None:
    a = run([med()], [obs("2157-6", 4 * uln, "U/L", 10)], sex=sex)
    assert a.criterion("ck").met is True
    assert a.ck_uln == uln
    a = run([med()], [obs("2157-6", 4 * uln - 1, "U/L", 10)], sex=sex)
    assert a.criterion("ck").met is False


def test_ck_in_microkatal_is_converted() -> None:
    a = run([med()], [obs("2157-6", 150, "ukat/L", 10, high=3.3)])
    assert a.ck_peak is not None and a.ck_peak.value == 9000
    assert a.ck_uln == pytest.approx(198)


# --- exposure ----------------------------------------------------------------------------------------

def test_no_exposure_means_no_card_even_with_full_pattern() -> None:
    pattern = [*temps(39.0, 39.4), obs("2157-6", 9400, "U/L", 5, high=200)]
    assert run([], pattern).indicator is None
    assert run([med("198440", names=("acetaminophen 500 MG Oral Tablet",))], pattern).indicator is None


def test_rxnorm_product_code_matches_and_name_fallback_matches_retired_codes() -> None:
    a = run([med(OLANZAPINE_10MG)], [])
    assert a.exposures[0].ingredient == "olanzapine" and a.exposures[0].matched_by == "rxnorm"
    a = run([med("999999999", names=("Haldol (haloperidol) 5 mg tablet",))], [])
    assert a.exposures[0].ingredient == "haloperidol" and a.exposures[0].matched_by == "name"


def test_pimavanserin_is_not_a_dopamine_antagonist() -> None:
    assert run([med(PIMAVANSERIN_IN)], []).exposures == []


def test_exposure_windows_active_recent_and_depot() -> None:
    stopped_old = med(status="completed", hours=100)
    assert run([stopped_old], []).exposures == []
    stopped_recent = med(status="completed", hours=60)
    assert len(run([stopped_recent], []).exposures) == 1
    vs = load()
    lai = next(c for c in vs.drugs_by_code.values() if c.long_acting_injectable and "paliperidone" in c.ingredients)
    depot = med(lai.code, status="completed", hours=21 * 24)
    exposures = run([depot], []).exposures
    assert len(exposures) == 1 and exposures[0].long_acting


def test_dopaminergic_withdrawal_counts_and_restart_cancels_it() -> None:
    vs = load()
    levodopa = next(c.code for c in vs.drugs_by_code.values() if c.drug_class == "levodopa")
    stopped = med(levodopa, status="stopped", hours=24 * 30, ended=48)
    a = run([stopped], [*temps(38.6, 39.1), obs("2157-6", 1300, "U/L", 6, high=200)])
    assert a.exposures[0].role == "withdrawal"
    assert a.indicator == "critical"
    restarted = med(levodopa, status="active", hours=2, ref="MedicationRequest/m2")
    assert run([stopped, restarted], []).exposures == []


# --- indicator policy --------------------------------------------------------------------------------

def test_critical_needs_exposure_fever_and_ck_or_iron() -> None:
    fever = temps(38.6, 39.1)
    assert run([med()], [*fever, obs("2157-6", 1000, "U/L", 6, high=200)]).indicator == "critical"
    assert run([med()], [*fever, obs("14798-3", 6.0, "umol/L", 6)]).indicator == "critical"
    assert run([med()], [*fever, obs("2498-4", 28, "ug/dL", 6)]).indicator == "critical"  # 5.0 µmol/L
    assert run([med()], fever).indicator == "warning"


def test_single_fever_needs_lab_change_for_a_warning() -> None:
    assert run([med()], temps(38.4)).indicator is None
    a = run([med()], [*temps(38.4), obs("6690-2", 12.1, "10*3/uL", 6)])
    assert a.indicator == "warning"


def test_im_injection_ck_without_fever_is_at_most_a_warning() -> None:
    im = med(route="78421000", hours=20)
    a = run([im], [obs("2157-6", 900, "U/L", 6, high=200), *temps(37.1, 36.9)])
    assert a.indicator == "warning"
    assert a.im_ck_artefact is True


def test_rechallenge_after_past_nms_warns_with_normal_vitals() -> None:
    history = (HistoryInput("condition", (Coding(ICD10CM, "G21.0"),), None, NOW - timedelta(days=700), "confirmed"),)
    a = run([med(draft=True)], temps(36.8), history=history)
    assert a.indicator == "warning"
    assert "re-challenge" in " ".join(a.reasons)
    refuted = (HistoryInput("condition", (Coding(ICD10CM, "G21.0"),), None, None, "refuted"),)
    assert run([med(draft=True)], temps(36.8), history=refuted).indicator is None


def test_incomplete_data_with_draft_antagonist_gives_info() -> None:
    a = run([med(draft=True)], [], missing=("laboratory results",))
    assert a.indicator == "info"


def test_full_structured_score_is_63() -> None:
    observations = [
        obs("8867-4", 80, "/min", 100), obs("9279-1", 16, "/min", 100),
        obs("8480-6", 120, "mm[Hg]", 100), obs("8462-4", 75, "mm[Hg]", 100),
        obs("8480-6", 120, "mm[Hg]", 20), obs("8462-4", 75, "mm[Hg]", 20),
        *temps(38.4, 38.9, 39.4),
        obs("8867-4", 124, "/min", 10), obs("9279-1", 26, "/min", 10),
        obs("8480-6", 165, "mm[Hg]", 10), obs("8462-4", 100, "mm[Hg]", 10),
        obs("2157-6", 9400, "U/L", 2, high=200),
    ]
    a = run([med(route="78421000")], observations)
    assert [c.met for c in a.criteria] == [True, True, True, True, True]
    assert a.score == 63
    assert a.indicator == "critical"


# --- unit conversion properties ----------------------------------------------------------------------

@given(st.floats(min_value=80, max_value=115, allow_nan=False))
def test_fahrenheit_conversion_matches_formula(value: float) -> None:
    conv = load().observation("8310-5").conversions["[degF]"]  # type: ignore[union-attr]
    assert conv.apply(value) == pytest.approx((value - 32) * 5 / 9, abs=0.001)


@given(st.floats(min_value=0.1, max_value=1000, allow_nan=False))
def test_iron_mass_and_molar_units_agree(value: float) -> None:
    iron = load().observation("2498-4")
    assert iron is not None
    assert iron.conversions["ug/dL"].apply(value) == pytest.approx(value * 10 / 55.845, abs=0.001)
    assert iron.conversions["umol/L"].apply(value) == pytest.approx(value, abs=0.001)


@given(st.floats(min_value=0, max_value=10_000, allow_nan=False), st.sampled_from(["2157-6", "6690-2", "1751-7"]))
def test_every_conversion_is_monotonic(value: float, code: str) -> None:
    concept = load().observation(code)
    assert concept is not None
    for conv in concept.conversions.values():
        assert conv.apply(value + 1) >= conv.apply(value)


def test_dose_increase_is_a_risk_factor() -> None:
    low = MedicationInput("MedicationRequest/a", False, "active", (Coding(RXNORM, HALOPERIDOL_IN),),
                          authored=ago(96), dose_value=5, dose_unit="mg")
    high = MedicationInput("MedicationRequest/b", True, "draft", (Coding(RXNORM, HALOPERIDOL_IN),),
                           authored=NOW, dose_value=10, dose_unit="mg")
    a = run([low, high], [])
    assert "dose increase: haloperidol 5 → 10 mg in the draft order" in a.risk_factors
    same = MedicationInput("MedicationRequest/c", True, "draft", (Coding(RXNORM, HALOPERIDOL_IN),),
                           authored=NOW, dose_value=5, dose_unit="mg")
    assert not any(r.startswith("dose increase") for r in run([low, same], []).risk_factors)
