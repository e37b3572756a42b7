"""The clinical policy of episodes, reconciliation, hyperthermia without a lab and other causes as evidence.

Each branch with real values (docs/clinical-rules.md: Time order, Reconciliation, Indicator policy, Other
causes weighed), in the clinical core and, where the wording matters, on the card.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cds_service.clinical import ClinicalInput, assess
from cds_service.clinical.model import Assessment, Coding, HistoryInput, MedicationInput, ObservationInput
from cds_service.clinical.valuesets import ATC, ICD10CM, RXNORM, SNOMED
from cds_service.services.cards import build_cards

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
LEVODOPA = (Coding(RXNORM, "197443"),)  # carbidopa 10 MG / levodopa 100 MG Oral Tablet
HALOPERIDOL = (Coding(RXNORM, "5093"),)
METOCLOPRAMIDE = (Coding(RXNORM, "6915"),)


def ago(hours: float) -> datetime:
    return NOW - timedelta(hours=hours)


def order(codings: tuple[Coding, ...], hours: float, *, status: str = "active", ref: str = "MedicationRequest/o",
          ended: float | None = None, draft: bool = False) -> MedicationInput:
    return MedicationInput(ref, draft, "draft" if draft else status, codings, authored=ago(hours),
                           ended=None if ended is None else ago(ended))


def statement(codings: tuple[Coding, ...], *, status: str, start: float, end: float | None,
              ref: str = "MedicationStatement/s") -> MedicationInput:
    return MedicationInput(ref, False, status, codings, authored=ago(start), ended=None if end is None else ago(end),
                           kind="statement")


def drug(codings: tuple[Coding, ...], hours: float, ref: str, names: tuple[str, ...] = ()) -> MedicationInput:
    return MedicationInput(ref, False, "active", codings, names, authored=ago(hours))


def temp(hours: float, value: float) -> ObservationInput:
    return ObservationInput(f"Observation/t{hours}", "final", ("8310-5",), value, "Cel", ago(hours))


def ck(hours: float, value: float, uln: float = 200, status: str = "final") -> ObservationInput:
    return ObservationInput(f"Observation/ck{hours}", status, ("2157-6",), value, "U/L", ago(hours), None, uln, "U/L")


def vital(code: str, hours: float, value: float, unit: str) -> ObservationInput:
    return ObservationInput(f"Observation/{code}-{hours}", "final", (code,), value, unit, ago(hours))


def iron(hours: float, value: float) -> ObservationInput:
    return ObservationInput(f"Observation/fe{hours}", "final", ("14798-3",), value, "umol/L", ago(hours))


def baseline(hr: float = 80, rr: float = 16, sbp: float = 120) -> list[ObservationInput]:
    return [o for h in (120, 108) for o in (temp(h, 36.8), vital("8867-4", h, hr, "/min"),
                                            vital("9279-1", h, rr, "/min"), vital("8480-6", h, sbp, "mm[Hg]"),
                                            vital("8462-4", h, 76, "mm[Hg]"))]


def condition(code: str, *, system: str = ICD10CM, text: str | None = None, display: str | None = None,
              status: str = "active", hours: float = 30, abated: float | None = None) -> HistoryInput:
    return HistoryInput("condition", (Coding(system, code, display),), text, ago(hours), "confirmed",
                        f"Condition/{code}", status, None if abated is None else ago(abated))


def run(meds: list[MedicationInput], observations: list[ObservationInput], **kw: Any) -> Assessment:
    return assess(ClinicalInput(now=NOW, medications=tuple(meds), observations=tuple(observations), **kw))


def card_text(a: Assessment) -> str:
    (card,) = build_cards(a, "hook-instance", "p1")
    return f"{card['summary']}\n{card['detail']}\n{card.get('overrideReasons')}"


FEBRILE = [temp(40, 38.3), temp(30, 38.7), temp(20, 39.0), temp(7, 39.4)]


# --- 1. episodes -------------------------------------------------------------------------------------------

def test_post_operative_ck_before_the_first_dose_does_not_anchor_the_febrile_episode() -> None:
    metoclopramide = order(METOCLOPRAMIDE, 72)
    observations = [ck(92, 700, 195), ck(80, 955, 195), *FEBRILE, ck(30, 2900, 195), ck(8, 5100, 195)]
    a = run([metoclopramide], observations)
    assert (a.onset, a.onset_kind) == (ago(40), "fever")
    assert [r.value for r in a.ck_set_aside] == [955]
    assert a.ck_peak is not None and a.ck_peak.value == 5100 and a.criterion("ck").met
    assert a.indicator == "critical" and a.hours_exposure_to_fever == pytest.approx(32)
    assert "set aside" in card_text(a)
    # without the two pre-drug CK values: the same critical card (the control)
    assert run([metoclopramide], observations[2:]).indicator == "critical"


def test_tail_of_the_set_aside_rise_is_not_a_new_rise() -> None:
    # CK 4.9 x ULN before the drug, 4.5 x ULN after it (falling), no fever: no episode the drug can explain
    a = run([order(METOCLOPRAMIDE, 72)], [ck(80, 980), ck(50, 900)])
    assert a.onset == ago(80) and a.findings_before_exposure and a.indicator is None


def test_a_new_ck_rise_after_the_exposure_opens_an_episode() -> None:
    a = run([order(HALOPERIDOL, 60)], [ck(70, 900), ck(30, 4000), temp(20, 38.6), temp(8, 39.0)])
    assert (a.onset, a.onset_kind) == (ago(30), "ck")
    assert a.criterion("ck").met and a.indicator == "critical"


def test_a_fever_before_the_exposure_still_anchors_the_episode() -> None:
    # the abnormal baseline: febrile before haloperidol, CK rises after it; nothing the drug can explain
    a = run([order(HALOPERIDOL, 30)], [temp(40, 38.6), temp(28, 38.9), temp(10, 39.2), ck(12, 4000)])
    assert a.onset == ago(40) and a.indicator is None


def test_draft_alone_keeps_the_abnormal_baseline_policy() -> None:
    a = run([order(HALOPERIDOL, 0, draft=True)], [ck(70, 900), temp(30, 38.6), temp(8, 39.0), ck(6, 4000)])
    assert a.indicator is None and a.findings_before_exposure


# --- 2. reconciliation -------------------------------------------------------------------------------------

PD_COURSE = [*baseline(hr=76), temp(40, 38.9), temp(26, 39.6), temp(10, 40.1), vital("8867-4", 10, 166, "/min"),
             vital("9279-1", 10, 28, "/min"), ck(16, 3400)]


def test_newer_stopped_statement_ends_an_active_levodopa_order_and_starts_a_withdrawal() -> None:
    active = order(LEVODOPA, 3 * 365 * 24)
    stopped = statement(LEVODOPA, status="stopped", start=3 * 365 * 24, end=72)
    assert run([active], PD_COURSE).indicator is None  # the active order alone: no withdrawal
    a = run([active, stopped], PD_COURSE)
    assert a.indicator == "critical"
    assert {e.role for e in a.exposures} == {"withdrawal"}
    assert a.hours_exposure_to_fever == pytest.approx(32)  # from the stop, not from the first levodopa
    assert a.conflicts and "MedicationRequest/o says active" in a.conflicts[0] and "stopped" in a.conflicts[0]
    text = card_text(a)
    assert "levodopa stopped" in text and "Records disagree" in text and "32 h before onset" in text
    assert "dopamine antagonist" not in text.split("\n[{")[0]  # the summary and detail never call levodopa one
    assert "Benefit of the dopamine antagonist" not in text


def test_not_taken_statement_also_ends_the_order() -> None:
    active = order(LEVODOPA, 3 * 365 * 24)
    not_taken = statement(LEVODOPA, status="not-taken", start=48, end=None)
    a = run([active, not_taken], PD_COURSE)
    assert a.indicator == "critical" and a.exposures[0].role == "withdrawal"
    assert "not-taken as of" in a.conflicts[0] and "no stop date given" in a.conflicts[0]


def test_the_newest_record_wins_either_way() -> None:
    stopped = statement(LEVODOPA, status="stopped", start=400, end=72)
    reordered = order(LEVODOPA, 50, ref="MedicationRequest/new")  # restarted before the fever: no withdrawal
    a = run([stopped, reordered], PD_COURSE)
    assert a.exposures == [] and a.conflicts == [] and a.indicator is None
    # restarted after the onset (the treatment): the fever still began while the drug was stopped
    restarted = order(LEVODOPA, 24, ref="MedicationRequest/new")
    assert run([stopped, restarted], PD_COURSE).indicator == "critical"


def test_stopped_statement_ends_an_antagonist_exposure() -> None:
    fever_ck = [temp(30, 38.6), temp(10, 39.2), ck(12, 2400)]
    haloperidol = order(HALOPERIDOL, 30 * 24)
    assert run([haloperidol], fever_ck).indicator == "critical"
    stopped_long_ago = statement(HALOPERIDOL, status="stopped", start=30 * 24, end=10 * 24)
    a = run([haloperidol, stopped_long_ago], fever_ck)
    assert a.indicator is None and a.conflicts  # taken as stopped 10 days ago: nothing in effect before onset
    stopped_recently = statement(HALOPERIDOL, status="stopped", start=30 * 24, end=40)
    assert run([haloperidol, stopped_recently], fever_ck).indicator == "critical"  # within 72 h before onset


# --- 3. hyperthermia without a lab -------------------------------------------------------------------------

HOT = [*baseline(hr=84), temp(9, 38.9), temp(6, 40.2), temp(4, 40.8), vital("8480-6", 6, 172, "mm[Hg]"),
       vital("8480-6", 4, 96, "mm[Hg]"), vital("8867-4", 1, 142, "/min"), vital("9279-1", 1, 30, "/min")]


def test_extreme_hyperthermia_with_autonomic_signs_is_critical_before_the_ck() -> None:
    a = run([order(HALOPERIDOL, 36)], [*HOT, temp(1, 41.7)])
    assert a.indicator == "critical" and a.ck_state == "missing"
    text = card_text(a)
    assert "CK not measured: order stat" in text and "order CK, creatinine and potassium stat" in text
    assert "no CK measured in this episode" in text


def test_one_reading_of_41_is_enough_and_a_pending_ck_is_named() -> None:
    observations = [o for o in HOT if o.value not in (40.2, 40.8)] + [
        temp(1, 41.2), ObservationInput("Observation/ck-pending", "preliminary", ("2157-6",), None, None, ago(2))]
    a = run([order(HALOPERIDOL, 36)], observations)
    assert a.indicator == "critical" and a.ck_state == "pending" and "CK pending" in card_text(a)


def test_extreme_hyperthermia_needs_autonomic_signs_and_a_missing_ck() -> None:
    flat = [*baseline(hr=84), temp(9, 38.9), temp(6, 40.2), temp(4, 40.8)]
    assert run([order(HALOPERIDOL, 36)], flat).indicator == "warning"  # no autonomic sign, no hypermetabolism
    one_40 = [o for o in HOT if o.value != 40.8]
    assert run([order(HALOPERIDOL, 36)], one_40).indicator == "warning"  # one reading >= 40, none >= 41
    measured = run([order(HALOPERIDOL, 36)], [*HOT, ck(2, 300)])
    assert measured.indicator == "warning" and measured.ck_state is None  # CK measured, 1.5 x ULN


# --- 4. other causes that are evidence ---------------------------------------------------------------------

CEFTRIAXONE = MedicationInput("MedicationAdministration/abx", False, "completed", (Coding(ATC, "J01DD04"),),
                              ("ceftriaxone 2 g IV",), authored=ago(40), kind="administration")
NEGATIVE_CULTURE = ObservationInput("Observation/bc", "final", ("600-7",), None, None, ago(42),
                                    value_codes=(Coding(SNOMED, "264868006"),))
MODEST = [*baseline(), *(temp(h, t) for h, t in ((70, 38.8), (58, 39.1), (46, 39.6), (34, 39.2), (22, 39.4))),
          vital("8480-6", 58, 165, "mm[Hg]"), vital("8480-6", 46, 118, "mm[Hg]"), ck(40, 700), iron(40, 4.1)]


def test_modest_ck_nms_on_an_empiric_antibiotic_is_critical() -> None:
    a = run([order(HALOPERIDOL, 6 * 24), CEFTRIAXONE], [*MODEST, NEGATIVE_CULTURE])
    assert a.indicator == "critical"
    infection = next(c for c in a.other_causes if c.cause == "infection")
    assert infection.found is False and infection.negative and "without a documented infection" in infection.possible[0]
    assert "blood culture negative" in card_text(a)


@pytest.mark.parametrize("documented", [
    condition("233604007", system=SNOMED, text="Pneumonia"),
    ObservationInput("Observation/bc+", "final", ("600-7",), None, None, ago(42),
                     value_codes=(Coding(SNOMED, "10828004"),)),
])
def test_a_coded_infection_or_a_positive_culture_closes_the_iron_route(documented: Any) -> None:
    history = (documented,) if isinstance(documented, HistoryInput) else ()
    observations = [*MODEST] + ([] if history else [documented])
    a = run([order(HALOPERIDOL, 6 * 24), CEFTRIAXONE], observations, history=history)
    assert a.indicator == "warning"
    assert next(c for c in a.other_causes if c.cause == "infection").found is True


@pytest.mark.parametrize("code", ["314154", "5093"])  # olanzapine 10 mg tablet (ACB 3), haloperidol
def test_olanzapine_is_judged_like_haloperidol(code: str) -> None:
    a = run([order((Coding(RXNORM, code),), 5 * 24)], [*baseline(), temp(30, 38.7), temp(12, 39.0), iron(20, 6.5)])
    assert a.indicator == "critical"
    assert next(c for c in a.other_causes if c.cause == "anticholinergic").found is False


def test_a_strongly_anticholinergic_other_drug_still_counts() -> None:
    amitriptyline = drug((Coding(RXNORM, "704"),), 48, "MedicationRequest/ami")
    a = run([order(HALOPERIDOL, 5 * 24), amitriptyline], [*baseline(), temp(30, 38.7), temp(12, 39.0), iron(20, 6.5)])
    assert next(c for c in a.other_causes if c.cause == "anticholinergic").found is True
    assert a.indicator == "warning"


def _serotonin(meds: list[MedicationInput]) -> bool | None:
    return next(c for c in run(meds, []).other_causes if c.cause == "serotonin-syndrome").found


def test_fentanyl_alone_is_not_serotonin_syndrome() -> None:
    fentanyl = drug((Coding(RXNORM, "4337"),), 24, "MedicationRequest/fen")
    ondansetron = drug((Coding(RXNORM, "26225"),), 24, "MedicationRequest/ond")
    sertraline = drug((Coding(RXNORM, "36437"),), 24, "MedicationRequest/ser")
    assert _serotonin([fentanyl]) is False
    assert _serotonin([fentanyl, ondansetron]) is False  # both weak: the everyday post-operative pair
    assert _serotonin([fentanyl, sertraline]) is True
    assert _serotonin([sertraline]) is True  # started in the last 7 days


def test_recurrence_after_a_coded_nms_escalates() -> None:
    nms = condition("G21.0", status="resolved", hours=35 * 24, abated=21 * 24)
    observations = [*baseline(hr=78), temp(30, 38.5), temp(10, 39.0), vital("8867-4", 10, 100, "/min"), ck(16, 600)]
    assert run([order(HALOPERIDOL, 96)], observations).indicator == "warning"
    a = run([order(HALOPERIDOL, 96)], observations, history=(nms,))
    assert a.indicator == "critical" and "recurrence" in a.reasons[0]
    # another documented cause keeps it a warning; a withdrawal is not a dopamine antagonist re-challenge
    sepsis = condition("A41.9")
    assert run([order(HALOPERIDOL, 96)], observations, history=(nms, sepsis)).indicator == "warning"
    withdrawal = order(LEVODOPA, 400, status="stopped", ended=60)
    assert run([withdrawal], observations, history=(nms,)).indicator == "warning"


def test_heat_illness_found_is_not_also_unchecked() -> None:
    heat = condition("T67.01XA", text=None, display=None)
    a = run([order(HALOPERIDOL, 60)], [temp(30, 38.6), temp(10, 39.2), ck(12, 2400)], history=(heat,))
    text = card_text(a)
    assert "Heat illness: **found**" in text and "heat exposure" not in text
    assert "Condition coded ICD-10-CM (T67.01XA" in text and "Condition condition" not in text


def test_a_condition_without_text_uses_its_coding_display() -> None:
    pneumonia = condition("J18.9", display="Pneumonia, unspecified organism")
    a = run([order(HALOPERIDOL, 60)], [temp(30, 38.6), temp(10, 39.2), ck(12, 2400)], history=(pneumonia,))
    infection = next(c for c in a.other_causes if c.cause == "infection")
    assert infection.evidence[0].startswith("Condition Pneumonia, unspecified organism (J18.9;")

