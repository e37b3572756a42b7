"""The NMS rules: exposure, normalised readings, the structured IEC criteria, acute-phase evidence and
the indicator policy. Pure functions; every threshold comes from ``data/thresholds.toml``.
"""

from __future__ import annotations

import re
import statistics
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
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
    OtherCause,
    Reading,
)
from cds_service.clinical.valuesets import ICD10CM, RXNORM, SNOMED, ObservationConcept, ValueSets, load

USABLE_STATUSES = frozenset({"final", "amended", "corrected"})
EXCLUDED_ORDER_STATUSES = frozenset({"entered-in-error", "cancelled"})
ONGOING_ORDER_STATUSES = frozenset({"active", "on-hold"})
ENDED_ORDER_STATUSES = frozenset({"stopped", "completed"})
# Per kind of record: statuses that mean "never taken / not a record", and those that mean "ongoing".
EXCLUDED_STATUSES = {
    "request": EXCLUDED_ORDER_STATUSES,
    "administration": frozenset({"not-done", "entered-in-error"}),
    "statement": frozenset({"entered-in-error", "not-taken", "intended"}),
}
ONGOING_STATUSES = {
    "request": ONGOING_ORDER_STATUSES,
    "administration": frozenset({"in-progress", "on-hold"}),
    "statement": frozenset({"active", "on-hold"}),
}
ENDED_STATUSES = {
    "request": ENDED_ORDER_STATUSES,
    "administration": frozenset({"completed", "stopped"}),
    "statement": frozenset({"completed", "stopped"}),
}
VITAL_CONCEPTS = ("body-temperature", "heart-rate", "respiratory-rate", "systolic-bp", "diastolic-bp")
LAB_CONCEPTS = ("creatine-kinase", "serum-iron", "wbc", "crp", "albumin", "creatinine", "potassium")
# Future-dated values are clock errors, not observations. Small skew between systems is tolerated.
_FUTURE_SKEW = timedelta(minutes=10)


# --- medications ------------------------------------------------------------------------------------


def _route(med: MedicationInput, vs: ValueSets, hint: str, long_acting: bool = False) -> str | None:
    """The route the order states (coded, then in words); without one, the product's route only where the
    product allows no other (an oral form, a long-acting injectable: intramuscular only). A short-acting
    injection may be given IM or IV, so its route stays unknown (README "Clinical rules")."""
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
    if hint == "unknown" or (hint == "im" and not long_acting):
        return None
    return hint


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
        if hit is None or (status or "") in EXCLUDED_STATUSES[med.kind] or med.do_not_perform:
            continue  # a prohibition (doNotPerform) is never exposure
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
            route=_route(med, vs, hint, lai),
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
        started_before = med.authored is None or med.authored <= at + _FUTURE_SKEW
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


_EARLIEST = datetime.min.replace(tzinfo=UTC)


def _exposure_order(e: Exposure) -> tuple[bool, datetime, str, str]:
    return (not e.is_draft, e.authored or _EARLIEST, e.ref or "", e.label)


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
    plausible: dict[str, list[float]] = vs.thresholds.get("plausible", {})
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
        unit = obs.unit if obs.unit else implied.get(concept.concept)
        conversion = None
        if unit:
            conversion = concept.conversions.get(unit) or concept.conversions.get(spellings.get(unit, ""))
        if obs.value is None or conversion is None or obs.time is None or obs.time > latest:
            quality.unusable += 1
            continue
        value = conversion.apply(obs.value)
        bounds = plausible.get(concept.concept)
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            quality.implausible.setdefault(concept.concept, []).append((obs.value, unit))
            continue
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


# --- time order ------------------------------------------------------------------------------------


def episode_onset(temps: Sequence[Reading], febrile: Sequence[Reading], cks: Sequence[Reading],
                  sex: str | None, vs: ValueSets) -> tuple[datetime | None, str | None]:
    """Onset = the first finding of the episode: its first febrile reading (reaching back through febrile
    readings at most ``onset.episode_gap_hours`` apart), or the first CK >= 4 x ULN when that comes first."""
    gap = timedelta(hours=vs.thresholds["onset"]["episode_gap_hours"])
    threshold = vs.thresholds["hyperthermia"]["threshold_cel"]
    fever: datetime | None = None
    if febrile:
        fever = febrile[0].time
        earlier = [r for r in temps if r.value > threshold and r.time < fever]
        for reading in reversed(earlier):
            if fever - reading.time > gap:
                break
            fever = reading.time
    multiple = vs.thresholds["ck"]["uln_multiple"]
    fallback = _uln_fallback(sex, vs)
    ck = next((r.time for r in cks if r.value >= multiple * (r.uln or fallback)), None)
    if ck is not None and (fever is None or ck < fever):
        return ck, "ck"
    return (fever, "fever") if fever is not None else (None, None)


# --- other causes (the IEC's negative work-up, from structured data) -----------------------------------

_CAUSE_LABELS = {
    "infection": "Infection or sepsis",
    "serotonin-syndrome": "Serotonin syndrome",
    "malignant-hyperthermia": "Malignant hyperthermia",
    "heat-illness": "Heat illness",
    "anticholinergic": "Anticholinergic toxicity",
    "rhabdomyolysis": "Rhabdomyolysis from another cause (trauma, exertion)",
}
_KIND_WORDS = {"request": "order", "administration": "given", "statement": "reported"}
_ACTIVE_CONDITION = frozenset({"active", "recurrence", "relapse"})


def _when(dt: datetime | None) -> str:
    return dt.strftime("%Y-%m-%d %H:%M") + " UTC" if dt else "time unknown"


def other_causes(inp: ClinicalInput, vs: ValueSets, lab_start: datetime) -> list[OtherCause]:
    """Evidence in the record for the other causes of fever or CK rise; found=None where the data needed
    to look were not available."""
    th = vs.thresholds["other_causes"]
    now = inp.now
    evidence: dict[str, list[str]] = {cause: [] for cause in _CAUSE_LABELS}
    antagonist_names = {n for n, role, _ in vs.drug_names if role in ("antagonist", "lithium")} | {"lithium"}
    serotonergic: dict[str, datetime | None] = {}
    for med in inp.medications:
        status = (med.status or "").lower()
        if status in EXCLUDED_STATUSES[med.kind] or med.do_not_perform:  # a prohibition is no drug taken
            continue
        groups: dict[str, set[str]] = {}
        for coding in med.codings:
            hit = vs.other_drug(coding.system, (coding.code or "").strip())
            if hit is not None:
                for group in hit.groups:
                    groups.setdefault(group, set()).add(hit.ingredient)
        for name in med.names:
            for hit in vs.match_other_drug(name):
                for group in hit.groups:
                    groups.setdefault(group, set()).add(hit.ingredient)
        if not groups:
            continue
        start, last = med.authored, med.ended or (med.authored if med.kind == "administration" else None)
        ongoing = status in ONGOING_STATUSES[med.kind] and (med.ended is None or med.ended > now)
        started = start is None or start <= now + _FUTURE_SKEW

        def within(delta: timedelta, start: datetime | None = start, last: datetime | None = last,
                   ongoing: bool = ongoing, started: bool = started) -> bool:
            return started and (ongoing or (start is not None and start >= now - delta)
                                or (last is not None and last >= now - delta))

        what = f"{_KIND_WORDS[med.kind]}{' (draft)' if med.is_draft else ''}, {_when(start)}"
        antimicrobial = groups.get("antibacterial", set()) | groups.get("antifungal", set())
        if antimicrobial and (med.is_draft or within(timedelta(days=th["antimicrobial_days"]))):
            evidence["infection"].append(f"antimicrobial {', '.join(sorted(antimicrobial))} ({what})")
        if med.is_draft:
            continue
        if groups.get("mh-trigger") and within(timedelta(hours=th["mh_trigger_hours"])):
            evidence["malignant-hyperthermia"].append(
                f"malignant-hyperthermia trigger {', '.join(sorted(groups['mh-trigger']))} ({what})")
        if groups.get("anticholinergic") and within(timedelta(hours=vs.thresholds["exposure"]["window_hours"])):
            evidence["anticholinergic"].append(
                f"strongly anticholinergic drug (ACB 3) {', '.join(sorted(groups['anticholinergic']))} ({what})")
        for ingredient in groups.get("serotonergic", set()) - antagonist_names:
            if within(timedelta(hours=vs.thresholds["exposure"]["window_hours"])):
                known = serotonergic.get(ingredient, start)
                serotonergic[ingredient] = min(known, start) if known and start else (known or start)
    recent_start = now - timedelta(days=th["serotonergic_start_days"])
    started_recently = sorted(i for i, t in serotonergic.items() if t is not None and t >= recent_start)
    if len(serotonergic) >= 2:
        evidence["serotonin-syndrome"].append("serotonergic drugs combined: " + ", ".join(sorted(serotonergic)))
    elif started_recently:
        evidence["serotonin-syndrome"].append(
            f"serotonergic drug started in the last {th['serotonergic_start_days']} days: "
            + ", ".join(started_recently))
    condition_window = timedelta(days=th["condition_days"])
    condition_groups: dict[str, str] = th["condition_groups"]
    for item in inp.history:
        if item.kind != "condition" or (item.verification or "").lower() in {"entered-in-error", "refuted"}:
            continue
        causes = (condition_groups.get(vs.cause_of(coding.system, (coding.code or "").strip()) or "")
                  for coding in item.codings)
        cause = next((c for c in causes if c), None)
        if cause is None or (item.recorded is not None and item.recorded > now + _FUTURE_SKEW):
            continue
        status = (item.clinical_status or "").lower()
        if item.abated is not None:
            current = item.abated >= now - condition_window
        else:
            current = status in _ACTIVE_CONDITION or (
                not status and (item.recorded is None or item.recorded >= now - condition_window))
            if status and status not in _ACTIVE_CONDITION:
                current = item.recorded is not None and item.recorded >= now - condition_window
        if current:
            code = next((f"{c.code}" for c in item.codings if vs.cause_of(c.system, (c.code or "").strip())), "")
            text = item.text or next((c.display for c in item.codings if c.display), None) or "condition"
            evidence[cause].append(f"Condition {text} ({code}; {status or 'status not given'}, recorded "
                                   f"{_when(item.recorded)})")
    for obs in inp.observations:
        if not set(obs.codes) & vs.culture_codes or obs.time is None or not lab_start <= obs.time <= now:
            continue
        if (obs.status or "").lower() not in USABLE_STATUSES:
            continue
        results = [vs.culture_results.get((c.system or "", c.code or "")) for c in obs.value_codes]
        organism = any(r is None and c.system == SNOMED for r, c in zip(results, obs.value_codes, strict=True))
        if "positive" in results or organism:
            evidence["infection"].append(f"positive blood culture {_when(obs.time)}")
    missing = " ".join(inp.missing).lower()
    no_drugs = "medication" in missing
    no_conditions = "condition" in missing
    out: list[OtherCause] = []
    for cause, label in _CAUSE_LABELS.items():
        found: bool | None = bool(evidence[cause])
        if not found and (no_drugs or (no_conditions and cause in ("heat-illness", "rhabdomyolysis"))):
            found = None
        out.append(OtherCause(cause, label, found, evidence[cause][:6]))
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
    onset, onset_kind = episode_onset(series.get("body-temperature", []), febrile, labs["creatine-kinase"],
                                      inp.sex, vs)
    # Time order: with an episode under way, only exposures in effect before its onset explain it; the
    # draft never does. Without one, the exposures of now (the draft included) are the ones that count.
    if onset is not None:
        prior, _ = find_exposures(inp, vs, onset, drafts=False)
    else:
        prior = [e for e in exposures if not e.is_draft]
    anchor = febrile[0].time if febrile else acute_start
    base = {c: _baseline(series.get(c, []), anchor, vs)
            for c in ("heart-rate", "respiratory-rate", "systolic-bp", "diastolic-bp")}
    ck, ck_peak, ck_uln = _ck(labs["creatine-kinase"], inp.sex, vs)
    ck_ratio = ck_peak.value / ck_uln if ck_peak is not None and ck_uln else 0.0
    autonomic = _autonomic(acute["systolic-bp"], acute["diastolic-bp"], base["systolic-bp"],
                           base["diastolic-bp"], vs)
    hypermet = _hypermetabolism(acute["heart-rate"], acute["respiratory-rate"], base["heart-rate"],
                                base["respiratory-rate"], vs)
    explaining = [e for e in prior if e.role in ("antagonist", "withdrawal")]
    scored = explaining if onset is not None else [e for e in exposures if e.role in ("antagonist", "withdrawal")]
    ex_th = th["exposure"]
    if scored:
        names = sorted({e.ingredient + (" (stopped: withdrawal)" if e.role == "withdrawal" else "")
                        for e in scored})
        when_text = " before onset" if onset is not None else ""
        exposure = Criterion("exposure", "Dopamine antagonist, or dopaminergic withdrawal, within 72 h "
                             f"{'before onset ' if onset is not None else ''}(depot: dosing interval)",
                             ex_th["points"], True, ex_th["points"], ", ".join(names) + when_text)
    elif onset is not None and any(e.role == "antagonist" for e in exposures):
        exposure = Criterion("exposure", "Dopamine antagonist, or dopaminergic withdrawal, within 72 h before onset",
                             ex_th["points"], False, 0, f"none in effect before onset ({_when(onset)}); "
                             "the draft or later orders cannot explain findings that precede them")
    else:
        exposure = Criterion("exposure", "Dopamine antagonist, or dopaminergic withdrawal, within 72 h",
                             ex_th["points"], False, 0, "no dopamine antagonist or dopaminergic withdrawal found")
    criteria = [exposure, hyper, ck, autonomic, hypermet]
    findings = _findings(series, lab_start, now, vs)
    history = _history(inp, vs)
    risks = risk_factors(exposures, recognised, inp, vs)
    if history:
        risks.insert(0, "previous episode of NMS on record (recurrence 15-20 %)")
    causes = other_causes(inp, vs, lab_start)
    other_found = [c for c in causes if c.found]

    present = {f.name for f in findings if f.present}
    im_window = timedelta(hours=th["indicator"]["im_ck_artefact_hours"])
    im_artefact = bool(
        ck.met and not febrile and ck_peak is not None and any(
            e.route == "im" and e.authored is not None and ck_peak.time - im_window <= e.authored <= ck_peak.time
            for e in explaining)
    )
    lab_change = bool(ck_ratio > 1.0 or present & {"iron-low-or-falling", "leukocytosis", "crp-raised"})
    draft_antagonist = any(e.is_draft and e.role == "antagonist" for e in exposures)

    indicator: Indicator | None = None
    reasons: list[str] = []
    if explaining:
        if hyper.met and ck.met:
            indicator = "critical"
            reasons.append("exposure before onset + hyperthermia + CK ≥ 4×ULN")
        elif hyper.met and "iron-nms-range" in present and not other_found:
            indicator = "critical"
            reasons.append("exposure before onset + hyperthermia + serum iron in NMS range")
        else:
            if hyper.met and "iron-nms-range" in present:
                reasons.append("exposure before onset + hyperthermia + serum iron in NMS range, with another "
                               "possible cause in the record (" + ", ".join(c.label.lower() for c in other_found)
                               + ") and CK below 4×ULN")
            elif hyper.met:
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
    elif draft_antagonist:
        # Only the draft: it cannot explain findings already there (README "Indicator policy": no card for an
        # abnormal baseline), but a previous NMS episode or an incomplete check is still worth saying.
        if history:
            indicator = "warning"
            reasons.append("draft dopamine antagonist after a previous NMS episode (re-challenge)")
        elif inp.missing:
            indicator = "info"
            reasons.append("draft dopamine antagonist; NMS check incomplete: " + ", ".join(inp.missing))

    seen_concepts = {c for c in LAB_CONCEPTS if labs[c]} | _resulted_concepts(inp, vs, lab_start)
    missing_labs = []
    for code in th["suggestions"]["order_loinc"]:
        concept = vs.observation(code)
        if concept is not None and concept.concept not in seen_concepts:
            missing_labs.append(code)

    first = min((e for e in explaining if e.authored), key=lambda e: e.authored or now, default=None)
    hours_to_fever = None
    if onset is not None and first is not None and first.authored is not None:
        hours_to_fever = (onset - first.authored).total_seconds() / 3600

    readings = {c: v for c, v in {**acute, **labs}.items() if v}
    capped = list(inp.capped) + [f"{n:,} older {concept} readings beyond the limit of "
                                 f"{th['limits']['readings_per_concept']:,} per concept"
                                 for concept, n in sorted(quality.capped.items())]
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
        onset=onset,
        onset_kind=onset_kind,  # type: ignore[arg-type]
        first_exposure=first,
        findings_before_exposure=onset is not None and not explaining,
        other_causes=causes,
        other_patient=list(inp.other_patient),
        capped=capped,
        unreadable=list(inp.unreadable),
        duplicates=inp.duplicates,
    )


def _resulted_concepts(inp: ClinicalInput, vs: ValueSets, lab_start: datetime) -> set[str]:
    """Lab concepts with any result in the lab window, under any of their codes, usable or not (a test
    that was done is never suggested again)."""
    out: set[str] = set()
    latest = inp.now + _FUTURE_SKEW
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
