"""The NMS rules: exposure, normalised readings, the structured IEC criteria, acute-phase evidence and
the indicator policy. Pure functions; every threshold comes from ``data/thresholds.toml``.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from itertools import pairwise
from operator import attrgetter
from typing import Any

from cds_service.clinical.model import (
    Assessment,
    ClinicalInput,
    Criterion,
    DataQuality,
    Exposure,
    Finding,
    HistoryItem,
    Indicator,
    MedicationInput,
    ObservationInput,
    Reading,
)
from cds_service.clinical.valuesets import ICD10CM, RXNORM, SNOMED, ObservationConcept, ValueSets, load

USABLE_STATUSES = frozenset({"final", "amended", "corrected"})
EXCLUDED_ORDER_STATUSES = frozenset({"entered-in-error", "cancelled"})
ONGOING_ORDER_STATUSES = frozenset({"active", "on-hold"})
ENDED_ORDER_STATUSES = frozenset({"stopped", "completed"})
VITAL_CONCEPTS = ("body-temperature", "heart-rate", "respiratory-rate", "systolic-bp", "diastolic-bp")
LAB_CONCEPTS = ("creatine-kinase", "serum-iron", "wbc", "crp", "albumin", "creatinine", "potassium")
# Future-dated values are clock errors, not observations. Small skew between systems is tolerated.
_FUTURE_SKEW = timedelta(minutes=10)


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
    """(ingredient, role, class, long_acting, route_hint, matched_by) for a drug the rules know."""
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
            lai = any(word in name.lower() for word in ("decanoate", "palmitate", "pamoate", "lauroxil",
                                                         "extended-release injectable", "depot"))
            return hit[0], hit[1], hit[2], lai, "unknown", "name"
    return None


def _label(med: MedicationInput, ingredient: str) -> str:
    for name in med.names:
        if name.strip():
            return name.strip()
    return ingredient


def find_exposures(inp: ClinicalInput, vs: ValueSets) -> tuple[list[Exposure], list[Exposure]]:
    """Dopamine-antagonist and withdrawal exposures that count now, and every recognised drug order."""
    th = vs.thresholds["exposure"]
    now = inp.now
    window = timedelta(hours=th["window_hours"])
    depot_window = timedelta(days=th["depot_window_days"])
    withdrawal_window = timedelta(days=th["withdrawal_window_days"])
    counted: list[Exposure] = []
    recognised: list[Exposure] = []
    ongoing_dopaminergic: set[str] = set()
    for med in inp.medications:
        hit = classify(med, vs)
        if hit is None or (med.status or "").lower() in EXCLUDED_ORDER_STATUSES:
            continue
        ingredient, role, drug_class, lai, hint, matched_by = hit
        status = (med.status or "").lower() or None
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
        )
        recognised.append(exposure)
        recent = med.authored is not None and now - window <= med.authored <= now + _FUTURE_SKEW
        ended_recently = med.ended is not None and now - window <= med.ended
        if role == "dopaminergic":
            lapsed = med.ended is not None and med.ended <= now
            if status in ONGOING_ORDER_STATUSES and not lapsed:
                ongoing_dopaminergic.add(ingredient)
                continue
            stopped_at = med.ended
            if (status in ENDED_ORDER_STATUSES or lapsed) and stopped_at is not None and (
                now - withdrawal_window <= stopped_at <= now
            ):
                counted.append(exposure)
            continue
        if role == "lithium":
            continue
        depot = lai and med.authored is not None and now - depot_window <= med.authored <= now
        if med.is_draft or status in ONGOING_ORDER_STATUSES or recent or ended_recently or depot:
            counted.append(exposure)
    # A dopaminergic drug that was stopped but is ordered again (active) is not a withdrawal.
    counted = [e for e in counted if not (e.role == "withdrawal" and e.ingredient in ongoing_dopaminergic)]
    return counted, recognised


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
    elif any(e.is_draft for e in antagonists) and any(
        e.ingredient in {d.ingredient for d in antagonists if not d.is_draft} for e in antagonists if e.is_draft
    ):
        out.append("draft order adds to a dopamine antagonist already prescribed (possible dose increase)")
    ingredients = sorted({e.ingredient for e in antagonists})
    if len(ingredients) > 1:
        out.append("more than one dopamine antagonist: " + ", ".join(ingredients))
    if any(e.drug_class == "fga-high-potency" for e in antagonists):
        out.append("high-potency first-generation antipsychotic")
    lithium = [e for e in recognised if e.role == "lithium" and (e.status in ONGOING_ORDER_STATUSES or e.is_draft)]
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
                out.append(f"{ingredient} {before.dose_value:g} → {after.dose_value:g} {unit} {where}")
    return out


# --- observations -----------------------------------------------------------------------------------

_by_time = attrgetter("time")


def normalise(observations: Iterable[ObservationInput], now: datetime, vs: ValueSets
              ) -> tuple[dict[str, list[Reading]], DataQuality]:
    quality = DataQuality()
    series: dict[str, list[Reading]] = {}
    wanted = set(VITAL_CONCEPTS) | set(LAB_CONCEPTS)
    lookup = vs.observations_by_code.get  # = vs.observation, without a method call per code
    by_codes: dict[tuple[str, ...], ObservationConcept | None] = {}  # the same code lists recur
    latest = now + _FUTURE_SKEW
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
        conversion = concept.conversions.get(obs.unit or "") if obs.unit else None
        if obs.value is None or conversion is None or obs.time is None or obs.time > latest:
            quality.unusable += 1
            continue
        value = conversion.apply(obs.value)
        uln = None
        if obs.ref_high is not None:
            ref_conv = concept.conversions.get(obs.ref_unit or obs.unit or "")
            if ref_conv is not None:
                uln = ref_conv.apply(obs.ref_high)
        used += 1
        series.setdefault(concept.concept, []).append(
            Reading(concept.concept, value, concept.canonical_unit, obs.time, concept.code, obs.ref, uln)
        )
    quality.used += used
    for readings in series.values():
        readings.sort(key=_by_time)
        # The same value reported twice (co-coded panels, duplicates) is one occasion.
        unique: list[Reading] = []
        for reading in readings:
            if unique and unique[-1].time == reading.time and unique[-1].value == reading.value:
                continue
            unique.append(reading)
        readings[:] = unique
    return series, quality


def _in(readings: Iterable[Reading], start: datetime, end: datetime) -> list[Reading]:
    return [r for r in readings if start <= r.time <= end]


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


def _uln_fallback(sex: str | None, vs: ValueSets) -> float:
    th = vs.thresholds["ck"]
    if sex == "female":
        return float(th["uln_fallback_female"])
    if sex == "male":
        return float(th["uln_fallback_male"])
    return float(th["uln_fallback_unknown"])


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


def _ck(cks: list[Reading], sex: str | None, vs: ValueSets) -> tuple[Criterion, Reading | None, float | None]:
    th = vs.thresholds["ck"]
    label = f"Creatine kinase ≥ {th['uln_multiple']:g} × upper limit of normal"
    if not cks:
        return Criterion("ck", label, th["points"], None, 0, "no CK result in the window"), None, None
    peak = max(cks, key=lambda r: r.value)
    uln = peak.uln or _uln_fallback(sex, vs)
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
    best: tuple[float, list[Reading]] | None = None
    for i, first in enumerate(series):
        for second in series[i + 1:]:
            if second.time - first.time > span:
                break
            delta = abs(second.value - first.value)
            if best is None or delta > best[0]:
                best = (delta, [first, second])
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
    acute_start = now - timedelta(hours=th["window"]["acute_hours"])
    lab_start = now - timedelta(days=th["window"]["lab_days"])

    exposures, recognised = find_exposures(inp, vs)
    series, quality = normalise(inp.observations, now, vs)
    acute = {c: _in(series.get(c, []), acute_start, now) for c in VITAL_CONCEPTS}
    labs = {c: _in(series.get(c, []), lab_start, now) for c in LAB_CONCEPTS}

    hyper, febrile = _hyperthermia(acute["body-temperature"], vs)
    anchor = febrile[0].time if febrile else acute_start
    base = {c: _baseline(series.get(c, []), anchor, vs)
            for c in ("heart-rate", "respiratory-rate", "systolic-bp", "diastolic-bp")}
    ck, ck_peak, ck_uln = _ck(labs["creatine-kinase"], inp.sex, vs)
    ck_ratio = ck_peak.value / ck_uln if ck_peak is not None and ck_uln else 0.0
    autonomic = _autonomic(acute["systolic-bp"], acute["diastolic-bp"], base["systolic-bp"],
                           base["diastolic-bp"], vs)
    hypermet = _hypermetabolism(acute["heart-rate"], acute["respiratory-rate"], base["heart-rate"],
                                base["respiratory-rate"], vs)
    antagonists = [e for e in exposures if e.role in ("antagonist", "withdrawal")]
    ex_th = th["exposure"]
    if antagonists:
        names = sorted({e.ingredient + (" (stopped: withdrawal)" if e.role == "withdrawal" else "")
                        for e in antagonists})
        exposure = Criterion("exposure", "Dopamine antagonist, or dopaminergic withdrawal, within 72 h "
                             "(depot: dosing interval)", ex_th["points"], True, ex_th["points"], ", ".join(names))
    else:
        exposure = Criterion("exposure", "Dopamine antagonist, or dopaminergic withdrawal, within 72 h",
                             ex_th["points"], False, 0, "no dopamine antagonist or dopaminergic withdrawal found")
    criteria = [exposure, hyper, ck, autonomic, hypermet]
    findings = _findings(series, lab_start, now, vs)
    history = _history(inp, vs)
    risks = risk_factors(exposures, recognised, inp, vs)
    if history:
        risks.insert(0, "previous episode of NMS on record (recurrence 15-20 %)")

    present = {f.name for f in findings if f.present}
    im_window = timedelta(hours=th["indicator"]["im_ck_artefact_hours"])
    im_artefact = bool(
        ck.met and not febrile and ck_peak is not None and any(
            e.route == "im" and e.authored is not None and ck_peak.time - im_window <= e.authored <= ck_peak.time
            for e in antagonists)
    )
    lab_change = bool(ck_ratio > 1.0 or present & {"iron-low-or-falling", "leukocytosis", "crp-raised"})
    draft_antagonist = any(e.is_draft and e.role == "antagonist" for e in exposures)

    indicator: Indicator | None = None
    reasons: list[str] = []
    if antagonists:
        if hyper.met and (ck.met or "iron-nms-range" in present):
            indicator = "critical"
            reasons.append("exposure + hyperthermia + " + ("CK ≥ 4×ULN" if ck.met else "serum iron in NMS range"))
        else:
            if hyper.met:
                reasons.append("exposure + hyperthermia on ≥ 2 occasions")
            if ck.met:
                reasons.append("exposure + CK ≥ 4×ULN" + (" (possibly from IM injection, afebrile)"
                                                          if im_artefact else ""))
            if len(febrile) == 1 and lab_change:
                reasons.append("exposure + one febrile reading with laboratory changes")
            if autonomic.met and hypermet.met:
                reasons.append("exposure + autonomic lability + hypermetabolism")
            if draft_antagonist and history:
                reasons.append("draft dopamine antagonist after a previous NMS episode (re-challenge)")
            if reasons:
                indicator = "warning"
            elif inp.missing and draft_antagonist:
                indicator = "info"
                reasons.append("draft dopamine antagonist; NMS check incomplete: " + ", ".join(inp.missing))

    resulted = {r.code for c in LAB_CONCEPTS for r in labs[c]}
    resulted_concepts = {c for c in LAB_CONCEPTS if labs[c]}
    missing_labs = []
    for code in th["suggestions"]["order_loinc"]:
        concept = vs.observation(code)
        if concept is not None and concept.concept not in resulted_concepts and code not in resulted:
            missing_labs.append(code)

    hours_to_fever = None
    starts = [e.authored for e in antagonists if e.authored and (not febrile or e.authored <= febrile[0].time)]
    if febrile and starts:
        hours_to_fever = (febrile[0].time - min(starts)).total_seconds() / 3600

    readings = {c: v for c, v in {**acute, **labs}.items() if v}
    return Assessment(
        now=now,
        indicator=indicator,
        reasons=reasons,
        exposures=exposures,
        criteria=criteria,
        findings=findings,
        history=history,
        risk_factors=risks,
        readings=readings,
        quality=quality,
        missing=list(inp.missing),
        missing_labs=missing_labs,
        ignored_orders=inp.ignored_orders,
        hours_exposure_to_fever=hours_to_fever,
        im_ck_artefact=im_artefact,
        ck_peak=ck_peak,
        ck_uln=ck_uln,
    )
