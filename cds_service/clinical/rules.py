"""The NMS rules: exposure, normalised readings, the structured IEC criteria, acute-phase evidence and
the indicator policy. Pure functions; every threshold comes from ``data/thresholds.toml``.
"""

from __future__ import annotations

import re
import statistics
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from itertools import pairwise
from operator import attrgetter
from typing import Any

from cds_service.clinical.causes import other_causes
from cds_service.clinical.common import (
    EARLIEST,
    ENDED_STATUSES,
    EXCLUDED_STATUSES,
    FUTURE_SKEW,
    ONGOING_STATUSES,
    USABLE_STATUSES,
    when_text,
)
from cds_service.clinical.episodes import find_episode, uln_fallback
from cds_service.clinical.model import (
    Assessment,
    ClinicalInput,
    Criterion,
    DataQuality,
    Exposure,
    Finding,
    HistoryItem,
    MedicationInput,
    ObservationInput,
    Reading,
)
from cds_service.clinical.policy import Facts, decide
from cds_service.clinical.reconcile import reconcile
from cds_service.clinical.valuesets import ICD10CM, RXNORM, SNOMED, ObservationConcept, ValueSets, load

VITAL_CONCEPTS = ("body-temperature", "heart-rate", "respiratory-rate", "systolic-bp", "diastolic-bp")
LAB_CONCEPTS = ("creatine-kinase", "serum-iron", "wbc", "crp", "albumin", "creatinine", "potassium")


# --- medications ------------------------------------------------------------------------------------


def _route(med: MedicationInput, vs: ValueSets, hint: str) -> str | None:
    for coding in med.route:
        if coding.system and coding.code and (coding.system, coding.code) in vs.routes:
            return vs.routes[(coding.system, coding.code)]
    text = " ".join(filter(None, [med.route_text, *(c.display or "" for c in med.route)])).lower()
    if "intramuscular" in text or text.strip() in {"im", "i.m."}:
        return "im"
    if "intravenous" in text or text.strip() in {"iv", "i.v."}:
        return "iv"
    if "oral" in text or text.strip() in {"po", "p.o."}:
        return "oral"
    if "subcutaneous" in text:
        return "sc"
    return None if hint == "unknown" else hint


def classify(med: MedicationInput, vs: ValueSets) -> tuple[str, str, str, bool, str, str] | None:
    """(ingredient, role, class, long_acting, route_hint, matched_by) for a drug the rules know: by RxNorm,
    by ATC (WHO or a national edition), then by ingredient, brand or national name in the text."""
    for coding in med.codings:
        if coding.code and coding.system in vs.atc_systems:
            atc = vs.atc(coding.system, coding.code.strip())
            if atc is not None:
                lai = _long_acting_text(med.names)
                ingredient = next((i for i in atc.ingredients if (hit := vs.match_drug_name(i)) and hit[1] == atc.role),
                                  atc.ingredients[0])
                return ingredient, atc.role, atc.drug_class, lai, "unknown", "atc"
    for coding in med.codings:
        if coding.code and (coding.system in (RXNORM, None)):
            concept = vs.drug(coding.code.strip())
            if concept is not None:
                ingredient = next(
                    (i for i in concept.ingredients if (hit := vs.match_drug_name(i)) and hit[1] == concept.role),
                    concept.ingredients[0],
                )
                return (ingredient, concept.role, concept.drug_class, concept.long_acting_injectable,
                        concept.route_hint, "rxnorm")
    for name in med.names:
        hit = vs.match_drug_name(name)
        if hit is not None:
            return hit[0], hit[1], hit[2], _long_acting_text((name,)), "unknown", "name"
    return None


_LAI_WORDS = ("decanoate", "palmitate", "pamoate", "lauroxil", "extended-release injectable", "depot")


def _long_acting_text(names: Iterable[str]) -> bool:
    return any(word in name.lower() for name in names for word in _LAI_WORDS)


def _label(med: MedicationInput, ingredient: str) -> str:
    for name in med.names:
        if name.strip():
            return name.strip()
    return ingredient


def find_exposures(inp: ClinicalInput, vs: ValueSets, at: datetime | None = None, *, drafts: bool = True
                   ) -> tuple[list[Exposure], list[Exposure]]:
    """Dopamine-antagonist and withdrawal exposures in effect at ``at`` (default: now), and every recognised
    drug record. ``drafts=False`` leaves the draft orders out of the first list: a drug not yet given cannot
    explain a finding that is already there."""
    th = vs.thresholds["exposure"]
    at = at or inp.now
    window = timedelta(hours=th["window_hours"])
    depot_window = timedelta(days=th["depot_window_days"])
    withdrawal_window = timedelta(days=th["withdrawal_window_days"])
    counted: list[Exposure] = []
    recognised: list[Exposure] = []
    ongoing_dopaminergic: set[str] = set()
    for med in inp.medications:
        hit = classify(med, vs)
        status = (med.status or "").lower() or None
        if hit is None or (status or "") in EXCLUDED_STATUSES[med.kind]:
            continue
        ingredient, role, drug_class, lai, hint, matched_by = hit
        exposure = Exposure(
            ingredient=ingredient,
            drug_class=drug_class,
            role="antagonist" if role == "antagonist" else ("lithium" if role == "lithium" else "withdrawal"),
            label=_label(med, ingredient),
            ref=med.ref,
            is_draft=med.is_draft,
            status=status,
            authored=med.authored,
            ended=med.ended,
            route=_route(med, vs, hint),
            long_acting=lai,
            matched_by=matched_by,  # type: ignore[arg-type]
            dose_value=med.dose_value,
            dose_unit=med.dose_unit,
            kind=med.kind,
        )
        recognised.append(exposure)
        if med.is_draft:
            if drafts and role == "antagonist":
                counted.append(exposure)
            continue
        started_before = med.authored is None or med.authored <= at + FUTURE_SKEW
        if not started_before:
            continue  # begun after the reference time: it cannot explain what came before it
        ongoing = status in ONGOING_STATUSES[med.kind] and (med.ended is None or med.ended > at)
        if med.kind == "administration" and status is None:
            ongoing = False
        last = med.ended or (med.authored if med.kind == "administration" else None)
        recent = med.authored is not None and at - window <= med.authored
        ended_recently = last is not None and at - window <= last
        if role == "dopaminergic":
            if ongoing or (med.kind == "administration" and (recent or ended_recently)):
                ongoing_dopaminergic.add(ingredient)
                continue
            stopped_at = med.ended
            lapsed = med.ended is not None and med.ended <= at
            if (status in ENDED_STATUSES[med.kind] or lapsed) and stopped_at is not None and (
                at - withdrawal_window <= stopped_at <= at
            ):
                counted.append(exposure)
            continue
        if role == "lithium":
            continue
        depot = lai and med.authored is not None and at - depot_window <= med.authored
        if ongoing or recent or ended_recently or depot:
            counted.append(exposure)
    # A dopaminergic drug that was stopped but is ordered again (active) is not a withdrawal.
    counted = [e for e in counted if not (e.role == "withdrawal" and e.ingredient in ongoing_dopaminergic)]
    # Drafts first, then in time order: the same answer whatever order the server or prefetch listed them in.
    counted.sort(key=_exposure_order)
    recognised.sort(key=_exposure_order)
    return counted, recognised


def _exposure_order(e: Exposure) -> tuple[bool, datetime, str, str]:
    return (not e.is_draft, e.authored or EARLIEST, e.ref or "", e.label)


def risk_factors(exposures: Sequence[Exposure], recognised: Sequence[Exposure], inp: ClinicalInput,
                 vs: ValueSets) -> list[str]:
    th = vs.thresholds["exposure"]
    out: list[str] = []
    antagonists = [e for e in exposures if e.role == "antagonist"]
    if any(e.route == "im" for e in antagonists):
        out.append("intramuscular dopamine antagonist")
    if any(e.long_acting for e in antagonists):
        out.append("long-acting injectable (depot) antipsychotic")
    recent = timedelta(days=th["recent_start_days"])
    started = sorted({e.ingredient for e in antagonists if not e.is_draft and e.authored
                      and inp.now - recent <= e.authored <= inp.now})
    if started:
        out.append("recent start or new order in the last {} days: {}".format(th["recent_start_days"],
                                                                              ", ".join(started)))
    increases = _dose_increases(antagonists, inp.now - recent)
    if increases:
        out.append("dose increase: " + "; ".join(increases))
    elif (record_ingredients := {d.ingredient for d in antagonists if not d.is_draft}) and any(
        e.is_draft and e.ingredient in record_ingredients for e in antagonists
    ):
        out.append("draft order adds to a dopamine antagonist already prescribed (possible dose increase)")
    ingredients = sorted({e.ingredient for e in antagonists})
    if len(ingredients) > 1:
        out.append("more than one dopamine antagonist: " + ", ".join(ingredients))
    if any(e.drug_class == "fga-high-potency" for e in antagonists):
        out.append("high-potency first-generation antipsychotic")
    lithium = [e for e in recognised if e.role == "lithium" and (e.status in ONGOING_STATUSES[e.kind] or e.is_draft)]
    if lithium:
        out.append("lithium co-prescribed")
    if any(e.role == "withdrawal" for e in exposures):
        out.append("dopaminergic drug stopped recently: " + ", ".join(
            sorted({e.ingredient for e in exposures if e.role == "withdrawal"})))
    return out


def _dose_increases(antagonists: Sequence[Exposure], since: datetime) -> list[str]:
    """Same ingredient and dose unit, a later order (or the draft) with a higher single dose."""
    out: list[str] = []
    by_ingredient: dict[tuple[str, str], list[Exposure]] = {}
    for e in antagonists:
        if e.dose_value is not None and e.dose_unit:
            by_ingredient.setdefault((e.ingredient, e.dose_unit), []).append(e)
    for (ingredient, unit), orders in sorted(by_ingredient.items()):
        dated = sorted(orders, key=lambda e: (e.is_draft, e.authored or since))
        for before, after in pairwise(dated):
            recent = after.is_draft or (after.authored is not None and after.authored >= since)
            if recent and before.dose_value is not None and after.dose_value is not None \
                    and after.dose_value > before.dose_value:
                where = "in the draft order" if after.is_draft else f"on {after.authored:%Y-%m-%d}"
                shown = unit if _UNIT_TOKEN.fullmatch(unit) else "(unit as ordered)"
                out.append(f"{ingredient} {before.dose_value:g} → {after.dose_value:g} {shown} {where}")
    return out


# A dose unit is shown only when it looks like a unit (UCUM code or a short word); other text stays out.
_UNIT_TOKEN = re.compile(r"[A-Za-z0-9%/.*{}\[\]µ^]{1,16}")


# --- observations -----------------------------------------------------------------------------------

_by_time = attrgetter("time")


def normalise(observations: Iterable[ObservationInput], now: datetime, vs: ValueSets
              ) -> tuple[dict[str, list[Reading]], DataQuality]:
    """Readings per concept in canonical units, time-ordered, duplicates merged, at most
    ``limits.readings_per_concept`` (the most recent) per concept."""
    quality = DataQuality()
    series: dict[str, list[Reading]] = {}
    wanted = set(VITAL_CONCEPTS) | set(LAB_CONCEPTS)
    lookup = vs.observations_by_code.get  # = vs.observation, without a method call per code
    spellings = vs.unit_spellings
    implied = vs.thresholds["units"]["implied_when_missing"]
    by_codes: dict[tuple[str, ...], ObservationConcept | None] = {}  # the same code lists recur
    latest = now + FUTURE_SKEW
    used = 0
    for obs in observations:
        try:
            concept = by_codes[obs.codes]
        except KeyError:
            concept = None
            for code in obs.codes:
                known = lookup(code)
                if known is not None and known.concept in wanted:
                    concept = known
                    break
            by_codes[obs.codes] = concept
        if concept is None:
            continue
        status = (obs.status or "").lower()
        if status == "entered-in-error":
            quality.entered_in_error += 1
            continue
        if status not in USABLE_STATUSES:
            quality.not_final += 1
            continue
        unit = obs.unit if obs.unit else implied.get(concept.concept)
        conversion = None
        if unit:
            conversion = concept.conversions.get(unit) or concept.conversions.get(spellings.get(unit, ""))
        if obs.value is None or conversion is None or obs.time is None or obs.time > latest:
            quality.unusable += 1
            continue
        value = conversion.apply(obs.value)
        uln = None
        if obs.ref_high is not None:
            ref_unit = obs.ref_unit or unit or ""
            ref_conv = concept.conversions.get(ref_unit) or concept.conversions.get(spellings.get(ref_unit, ""))
            if ref_conv is not None:
                uln = ref_conv.apply(obs.ref_high)
        used += 1
        series.setdefault(concept.concept, []).append(
            Reading(concept.concept, value, concept.canonical_unit, obs.time, concept.code, obs.ref, uln)
        )
    quality.used += used
    cap = int(vs.thresholds["limits"]["readings_per_concept"])
    for name, readings in series.items():
        readings.sort(key=_by_time)
        # The same value reported twice (co-coded panels, duplicates) is one occasion.
        unique: list[Reading] = []
        for reading in readings:
            if unique and unique[-1].time == reading.time and unique[-1].value == reading.value:
                continue
            unique.append(reading)
        if len(unique) > cap:
            quality.capped[name] = len(unique) - cap
            unique = unique[-cap:]
        readings[:] = unique
    return series, quality


def _in(readings: Sequence[Reading], start: datetime, end: datetime) -> list[Reading]:
    """The readings with ``start <= time <= end``; ``readings`` are time-ordered (as :func:`normalise` gives)."""
    return list(readings[bisect_left(readings, start, key=_by_time):bisect_right(readings, end, key=_by_time)])


def _baseline(readings: Sequence[Reading], anchor: datetime, vs: ValueSets) -> Reading | None:
    th = vs.thresholds["baseline"]
    window = _in(readings, anchor - timedelta(hours=th["lookback_start_hours"]),
                 anchor - timedelta(hours=th["lookback_end_hours"]))
    if window:
        median = statistics.median(r.value for r in window)
        closest = min(window, key=lambda r: abs(r.value - median))
        return Reading(closest.concept, median, closest.unit, closest.time, closest.code, None)
    earlier = _in(readings, anchor - timedelta(days=th["fallback_days"]), anchor - timedelta(hours=1))
    return earlier[0] if earlier else None


def _fmt(value: float, unit: str) -> str:
    shown = {"Cel": "°C", "10*9/L": "×10⁹/L", "umol/L": "µmol/L", "/min": "/min", "mm[Hg]": "mmHg"}.get(unit, unit)
    if unit in {"U/L", "/min", "mm[Hg]"}:
        return f"{value:,.0f} {shown}"
    return f"{value:,.1f} {shown}"


def fmt_reading(reading: Reading) -> str:
    return f"{_fmt(reading.value, reading.unit)} at {reading.time.strftime('%Y-%m-%d %H:%M')} UTC"


# --- criteria ---------------------------------------------------------------------------------------


def _hyperthermia(temps: list[Reading], vs: ValueSets) -> tuple[Criterion, list[Reading]]:
    th = vs.thresholds["hyperthermia"]
    febrile = [r for r in temps if r.value > th["threshold_cel"]]
    met = len(febrile) >= th["min_readings"]
    if febrile:
        peak = max(febrile, key=lambda r: r.value)
        summary = (f"{len(febrile)} reading(s) > {th['threshold_cel']:.1f} °C in the last "
                   f"{vs.thresholds['window']['acute_hours']} h; max {fmt_reading(peak)}")
    elif temps:
        summary = f"no reading > {th['threshold_cel']:.1f} °C ({len(temps)} reading(s), max " \
                  f"{_fmt(max(r.value for r in temps), 'Cel')})"
    else:
        summary = "no temperature recorded in the window"
    return Criterion("hyperthermia", f"Hyperthermia > {th['threshold_cel']:.1f} °C on ≥ {th['min_readings']} "
                     "occasions", th["points"], met if temps else None, th["points"] if met else 0, summary,
                     febrile or temps[-3:]), febrile


def _ck(cks: list[Reading], sex: str | None, vs: ValueSets, set_aside: Sequence[Reading] = ()
        ) -> tuple[Criterion, Reading | None, float | None]:
    th = vs.thresholds["ck"]
    label = f"Creatine kinase ≥ {th['uln_multiple']:g} × upper limit of normal"
    if not cks:
        summary = "no CK result in this episode" if set_aside else "no CK result in the window"
        if set_aside:
            summary += " (the CK rise before the exposure, without fever, is not counted)"
        return Criterion("ck", label, th["points"], None, 0, summary), None, None
    peak = max(cks, key=lambda r: r.value)
    uln = peak.uln or uln_fallback(sex, vs)
    source = "lab reference range" if peak.uln else f"fallback ULN for {sex or 'unknown sex'} (Mayo)"
    ratio = peak.value / uln if uln else 0.0
    met = ratio >= th["uln_multiple"]
    summary = f"peak {fmt_reading(peak)} = {ratio:.1f} × ULN {uln:,.0f} U/L ({source})"
    return Criterion("ck", label, th["points"], met, th["points"] if met else 0, summary, cks), peak, uln


def _autonomic(sbp: list[Reading], dbp: list[Reading], base_s: Reading | None, base_d: Reading | None,
               vs: ValueSets) -> Criterion:
    th = vs.thresholds["autonomic"]
    label = "Sympathetic lability: BP elevation ≥ 25 % and BP fluctuation (2 items from data)"
    if not sbp and not dbp:
        return Criterion("autonomic", label, th["points"], None, 0, "no blood pressure in the window")
    items: list[str] = []
    evidence: list[Reading] = []
    for series, base, name in ((sbp, base_s, "systolic"), (dbp, base_d, "diastolic")):
        if series and base is not None:
            peak = max(series, key=lambda r: r.value)
            if peak.value >= base.value * (1 + th["bp_elevation_fraction"]):
                items.append(f"{name} {peak.value:.0f} mmHg vs baseline {base.value:.0f} "
                             f"(+{(peak.value / base.value - 1) * 100:.0f} %)")
                evidence.append(peak)
                break
    span = timedelta(hours=th["fluctuation_window_hours"])
    for series, limit, name in ((sbp, th["fluctuation_systolic_mmhg"], "systolic"),
                                (dbp, th["fluctuation_diastolic_mmhg"], "diastolic")):
        swing = _max_swing(series, span)
        if swing is not None and swing[0] >= limit:
            items.append(f"{name} change of {swing[0]:.0f} mmHg within {th['fluctuation_window_hours']} h")
            evidence.extend(swing[1])
            break
    met = len(items) >= th["min_items"]
    judged = met or (base_s is not None or base_d is not None)
    summary = "; ".join(items) if items else "no BP elevation or fluctuation meeting the thresholds"
    if not judged:
        summary += " (no baseline BP)"
    return Criterion("autonomic", label, th["points"], met if judged else None, th["points"] if met else 0,
                     summary, evidence)


def _max_swing(series: Sequence[Reading], span: timedelta) -> tuple[float, list[Reading]] | None:
    """The largest change between two readings at most ``span`` apart (time-ordered input), in O(n): for
    each reading, the highest and lowest earlier reading still within ``span`` come from monotonic deques."""
    best: tuple[float, list[Reading]] | None = None
    highs: deque[Reading] = deque()  # values decreasing
    lows: deque[Reading] = deque()  # values increasing
    for second in series:
        while highs and second.time - highs[0].time > span:
            highs.popleft()
        while lows and second.time - lows[0].time > span:
            lows.popleft()
        for first in (highs[0] if highs else None, lows[0] if lows else None):
            if first is not None:
                delta = abs(second.value - first.value)
                if best is None or delta > best[0]:
                    best = (delta, [first, second])
        while highs and highs[-1].value <= second.value:
            highs.pop()
        highs.append(second)
        while lows and lows[-1].value >= second.value:
            lows.pop()
        lows.append(second)
    return best


def _hypermetabolism(hr: list[Reading], rr: list[Reading], base_hr: Reading | None, base_rr: Reading | None,
                     vs: ValueSets) -> Criterion:
    th = vs.thresholds["hypermetabolism"]
    label = "Hypermetabolism: heart rate ≥ 25 % and respiratory rate ≥ 50 % above baseline"
    if not hr or not rr or base_hr is None or base_rr is None:
        missing = "no HR/RR in the window" if not hr or not rr else "no baseline HR/RR"
        return Criterion("hypermetabolism", label, th["points"], None, 0, missing)
    peak_hr = max(hr, key=lambda r: r.value)
    peak_rr = max(rr, key=lambda r: r.value)
    hr_up = peak_hr.value / base_hr.value - 1
    rr_up = peak_rr.value / base_rr.value - 1
    met = hr_up >= th["hr_fraction"] and rr_up >= th["rr_fraction"]
    summary = (f"HR {peak_hr.value:.0f} vs baseline {base_hr.value:.0f} (+{hr_up * 100:.0f} %), "
               f"RR {peak_rr.value:.0f} vs baseline {base_rr.value:.0f} (+{rr_up * 100:.0f} %)")
    return Criterion("hypermetabolism", label, th["points"], met, th["points"] if met else 0, summary,
                     [peak_hr, peak_rr])


def _findings(series: dict[str, list[Reading]], lab_start: datetime, now: datetime,
              vs: ValueSets) -> list[Finding]:
    th_iron = vs.thresholds["iron"]
    th_ap = vs.thresholds["acute_phase"]
    out: list[Finding] = []
    iron_all = series.get("serum-iron", [])
    iron = _in(iron_all, lab_start, now)
    if iron:
        low = min(iron, key=lambda r: r.value)
        earlier = [r for r in iron_all if r.time < lab_start]
        before = earlier[-1] if earlier else (iron[0] if iron[0] is not low else None)
        falling = before is not None and before.value > 0 and (
            (before.value - low.value) / before.value >= th_iron["falling_fraction"])
        in_range = low.value <= th_iron["nms_range_umol"]
        is_low = low.value < th_iron["normal_low_umol"]
        words = []
        if in_range:
            words.append(f"in the NMS range (≤ {th_iron['nms_range_umol']:g} µmol/L; NMS mean 5.38)")
        elif is_low:
            words.append(f"below normal ({th_iron['normal_low_umol']:g}-32 µmol/L)")
        if falling and before is not None:
            words.append(f"falling from {_fmt(before.value, 'umol/L')}")
        summary = f"serum iron {fmt_reading(low)}" + (": " + ", ".join(words) if words else " (normal)")
        out.append(Finding("iron-nms-range", in_range, summary, [r for r in (before, low) if r]))
        out.append(Finding("iron-low-or-falling", is_low or falling, summary, [r for r in (before, low) if r]))
    for concept, name, cmp, limit, text in (
        ("wbc", "leukocytosis", max, th_ap["wbc_high"], "WBC"),
        ("crp", "crp-raised", max, th_ap["crp_high"], "CRP"),
        ("albumin", "albumin-low", min, th_ap["albumin_low"], "albumin"),
    ):
        values = _in(series.get(concept, []), lab_start, now)
        if not values:
            continue
        pick = cmp(values, key=lambda r: r.value)
        present = pick.value >= limit if cmp is max else pick.value < limit
        out.append(Finding(name, present, f"{text} {fmt_reading(pick)}", [pick]))
    return out


def _history(inp: ClinicalInput, vs: ValueSets) -> list[HistoryItem]:
    nms_codes = set(vs.condition_codes("nms"))
    snomed_nms = vs.thresholds["history"]["snomed_nms"]
    out: list[HistoryItem] = []
    for item in inp.history:
        if (item.verification or "").lower() in {"entered-in-error", "refuted"}:
            continue
        coded = any((c.system, c.code) in nms_codes or (c.system == SNOMED and c.code == snomed_nms)
                    for c in item.codings)
        text = " ".join(filter(None, [item.text, *(c.display or "" for c in item.codings)])).lower()
        named = "neuroleptic malignant" in text or "malignant neuroleptic" in text
        if coded or named:
            what = "Condition" if item.kind == "condition" else "AllergyIntolerance"
            label = item.text or next((c.display for c in item.codings if c.display), None) or "NMS"
            code = next((f"{'SNOMED' if c.system == SNOMED else 'ICD-10-CM' if c.system == ICD10CM else c.system} "
                         f"{c.code}" for c in item.codings if (c.system, c.code) in nms_codes
                         or c.code == snomed_nms), None)
            out.append(HistoryItem(item.kind, f"{what}: {label}" + (f" ({code})" if code else ""),
                                   item.recorded, item.ref))
    return out


# --- assessment -------------------------------------------------------------------------------------


def assess(inp: ClinicalInput, vs: ValueSets | None = None) -> Assessment:
    """Assess one patient at ``inp.now``. Deterministic: same input, same output."""
    vs = vs or load()
    now = inp.now
    th: dict[str, Any] = vs.thresholds
    medications, conflicts = reconcile(inp.medications, lambda m: _ingredient(m, vs), now)
    inp = replace(inp, medications=medications)
    acute_start = now - timedelta(hours=th["window"]["acute_hours"])
    lab_start = now - timedelta(days=th["window"]["lab_days"])

    exposures, recognised = find_exposures(inp, vs)
    series, quality = normalise(inp.observations, now, vs)
    acute = {c: _in(series.get(c, []), acute_start, now) for c in VITAL_CONCEPTS}
    labs = {c: _in(series.get(c, []), lab_start, now) for c in LAB_CONCEPTS}

    hyper, febrile = _hyperthermia(acute["body-temperature"], vs)
    # Time order (README "Time order"): with an episode under way, only exposures in effect before its onset
    # explain it; the draft never does. Without one, the record's exposures of now are the ones that count.
    episode = find_episode(series.get("body-temperature", []), febrile, labs["creatine-kinase"], inp.sex, vs,
                           lambda t: _explaining(find_exposures(inp, vs, t, drafts=False)[0]))
    onset = episode.onset
    explaining = episode.explaining if onset is not None else _explaining(e for e in exposures if not e.is_draft)
    anchor = febrile[0].time if febrile else acute_start
    base = {c: _baseline(series.get(c, []), anchor, vs)
            for c in ("heart-rate", "respiratory-rate", "systolic-bp", "diastolic-bp")}
    episode_cks = [r for r in labs["creatine-kinase"] if episode.ck_from is None or r.time >= episode.ck_from]
    ck, ck_peak, ck_uln = _ck(episode_cks, inp.sex, vs, episode.set_aside)
    ck_ratio = ck_peak.value / ck_uln if ck_peak is not None and ck_uln else 0.0
    autonomic = _autonomic(acute["systolic-bp"], acute["diastolic-bp"], base["systolic-bp"],
                           base["diastolic-bp"], vs)
    hypermet = _hypermetabolism(acute["heart-rate"], acute["respiratory-rate"], base["heart-rate"],
                                base["respiratory-rate"], vs)
    criteria = [_exposure_criterion(explaining, exposures, onset, th), hyper, ck, autonomic, hypermet]
    findings = _findings(series, lab_start, now, vs)
    history = _history(inp, vs)
    risks = risk_factors(exposures, recognised, inp, vs)
    if history:
        risks.insert(0, "previous episode of NMS on record (recurrence 15-20 %)")
    causes = other_causes(inp, vs, lab_start)

    present = {f.name for f in findings if f.present}
    im_window = timedelta(hours=th["indicator"]["im_ck_artefact_hours"])
    im_artefact = bool(
        ck.met and not febrile and ck_peak is not None and any(
            e.route == "im" and e.authored is not None and ck_peak.time - im_window <= e.authored <= ck_peak.time
            for e in explaining)
    )
    extreme = _extreme_hyperthermia(acute["body-temperature"], vs)
    ck_state = _ck_state(inp, vs, episode.ck_from or lab_start) if extreme and ck.met is None else None
    indicator, reasons = decide(Facts(
        explaining=bool(explaining), antagonist_explaining=any(e.role == "antagonist" for e in explaining),
        draft_antagonist=any(e.is_draft and e.role == "antagonist" for e in exposures),
        hyper=hyper, ck=ck, autonomic=autonomic, hypermet=hypermet, febrile=len(febrile),
        iron_nms="iron-nms-range" in present,
        lab_change=bool(ck_ratio > 1.0 or present & {"iron-low-or-falling", "leukocytosis", "crp-raised"}),
        im_artefact=im_artefact, history=bool(history), extreme=extreme, ck_state=ck_state,
        other_found=[c for c in causes if c.found], missing=list(inp.missing)))

    seen_concepts = {c for c in LAB_CONCEPTS if labs[c]} | _resulted_concepts(inp, vs, lab_start)
    missing_labs = [code for code in th["suggestions"]["order_loinc"]
                    if (concept := vs.observation(code)) is not None and concept.concept not in seen_concepts]
    first = min((e for e in explaining if _started(e)), key=lambda e: _started(e) or now, default=None)
    started = _started(first) if first is not None else None
    readings = {c: v for c, v in {**acute, **labs}.items() if v}
    capped = list(inp.capped) + [f"{n:,} older {concept} readings beyond the limit of "
                                 f"{th['limits']['readings_per_concept']:,} per concept"
                                 for concept, n in sorted(quality.capped.items())]
    return Assessment(
        now=now, indicator=indicator, reasons=reasons, exposures=exposures, criteria=criteria, findings=findings,
        history=history, risk_factors=risks, readings=readings, quality=quality, missing=list(inp.missing),
        missing_labs=missing_labs, ignored_orders=inp.ignored_orders,
        hours_exposure_to_fever=(onset - started).total_seconds() / 3600 if onset and started else None,
        im_ck_artefact=im_artefact, ck_peak=ck_peak, ck_uln=ck_uln, onset=onset,
        onset_kind=episode.kind,  # type: ignore[arg-type]
        first_exposure=first, findings_before_exposure=onset is not None and not explaining, other_causes=causes,
        other_patient=list(inp.other_patient), capped=capped, conflicts=conflicts,
        ck_set_aside=list(episode.set_aside), ck_state=ck_state,  # type: ignore[arg-type]
    )


def _ingredient(med: MedicationInput, vs: ValueSets) -> str | None:
    hit = classify(med, vs)
    return hit[0] if hit is not None else None


def _explaining(exposures: Iterable[Exposure]) -> list[Exposure]:
    return [e for e in exposures if e.role in ("antagonist", "withdrawal")]


def _started(e: Exposure) -> datetime | None:
    """When an exposure began to act: an antagonist when started; a withdrawal when the drug was stopped."""
    return e.ended if e.role == "withdrawal" else e.authored


def _exposure_criterion(explaining: list[Exposure], exposures: list[Exposure], onset: datetime | None,
                        th: dict[str, Any]) -> Criterion:
    ex_th = th["exposure"]
    scored = explaining if onset is not None else _explaining(exposures)
    if scored:
        names = sorted({e.ingredient + (" (stopped: withdrawal)" if e.role == "withdrawal" else "")
                        for e in scored})
        return Criterion("exposure", "Dopamine antagonist, or dopaminergic withdrawal, within 72 h "
                         f"{'before onset ' if onset is not None else ''}(depot: dosing interval)",
                         ex_th["points"], True, ex_th["points"],
                         ", ".join(names) + (" before onset" if onset is not None else ""))
    if onset is not None and any(e.role == "antagonist" for e in exposures):
        return Criterion("exposure", "Dopamine antagonist, or dopaminergic withdrawal, within 72 h before onset",
                         ex_th["points"], False, 0, f"none in effect before onset ({when_text(onset)}); "
                         "the draft or later orders cannot explain findings that precede them")
    return Criterion("exposure", "Dopamine antagonist, or dopaminergic withdrawal, within 72 h",
                     ex_th["points"], False, 0, "no dopamine antagonist or dopaminergic withdrawal found")


def _extreme_hyperthermia(temps: Sequence[Reading], vs: ValueSets) -> str | None:
    """``hyperthermia.extreme_min_readings`` readings >= ``extreme_cel`` or one >= ``extreme_single_cel``, in
    words; None otherwise."""
    th = vs.thresholds["hyperthermia"]
    if any(r.value >= th["extreme_single_cel"] for r in temps):
        return f"{_fmt(max(r.value for r in temps), 'Cel')} ≥ {th['extreme_single_cel']:.1f} °C"
    high = [r for r in temps if r.value >= th["extreme_cel"]]
    if len(high) >= th["extreme_min_readings"]:
        return f"{len(high)} readings ≥ {th['extreme_cel']:.1f} °C"
    return None


_PENDING = frozenset({"registered", "preliminary"})


def _ck_state(inp: ClinicalInput, vs: ValueSets, since: datetime) -> str:
    """"pending" when a CK of the episode is registered or preliminary (not yet final), else "missing"."""
    for obs in inp.observations:
        if obs.time is not None and since <= obs.time <= inp.now + FUTURE_SKEW and \
                (obs.status or "").strip().lower() in _PENDING and any(
                    (c := vs.observation(code)) is not None and c.concept == "creatine-kinase" for code in obs.codes):
            return "pending"
    return "missing"


def _resulted_concepts(inp: ClinicalInput, vs: ValueSets, lab_start: datetime) -> set[str]:
    """Lab concepts with any result in the lab window, under any of their codes, usable or not (a test
    that was done is never suggested again)."""
    out: set[str] = set()
    latest = inp.now + FUTURE_SKEW
    by_codes: dict[tuple[str, ...], tuple[str, ...]] = {}  # the same code lists recur: look each up once
    for obs in inp.observations:
        if obs.time is None or not lab_start <= obs.time <= latest:
            continue
        concepts = by_codes.get(obs.codes)
        if concepts is None:
            found = (vs.observation(code) for code in obs.codes)
            concepts = tuple(c.concept for c in found if c is not None and c.concept in LAB_CONCEPTS)
            by_codes[obs.codes] = concepts
        if not concepts or (obs.status or "").lower() in ("entered-in-error", "cancelled"):
            continue
        out.update(concepts)
    return out
