"""Readings and the structured IEC criteria: normalised readings, baselines, each criterion judged from data,
the acute-phase findings and a previous NMS. Pure; every threshold comes from ``data/thresholds.toml``.
"""

from __future__ import annotations

import statistics
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from operator import attrgetter

from cds_service.clinical.common import FUTURE_SKEW, USABLE_STATUSES
from cds_service.clinical.episodes import uln_fallback
from cds_service.clinical.model import (
    ClinicalInput,
    Criterion,
    DataQuality,
    Finding,
    HistoryItem,
    ObservationInput,
    Reading,
)
from cds_service.clinical.valuesets import SNOMED, ObservationConcept, ValueSets

VITAL_CONCEPTS = ("body-temperature", "heart-rate", "respiratory-rate", "systolic-bp", "diastolic-bp")
LAB_CONCEPTS = ("creatine-kinase", "serum-iron", "wbc", "crp", "albumin", "creatinine", "potassium")


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
        unit = obs.unit if obs.unit else (concept.implied_unit or implied.get(concept.concept))
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


def in_window(readings: Sequence[Reading], start: datetime, end: datetime) -> list[Reading]:
    """The readings with ``start <= time <= end``; ``readings`` are time-ordered (as :func:`normalise` gives)."""
    return list(readings[bisect_left(readings, start, key=_by_time):bisect_right(readings, end, key=_by_time)])


def baseline(readings: Sequence[Reading], anchor: datetime, vs: ValueSets) -> Reading | None:
    th = vs.thresholds["baseline"]
    window = in_window(readings, anchor - timedelta(hours=th["lookback_start_hours"]),
                 anchor - timedelta(hours=th["lookback_end_hours"]))
    if window:
        median = statistics.median(r.value for r in window)
        closest = min(window, key=lambda r: abs(r.value - median))
        return Reading(closest.concept, median, closest.unit, closest.time, closest.code, None)
    earlier = in_window(readings, anchor - timedelta(days=th["fallback_days"]), anchor - timedelta(hours=1))
    return earlier[0] if earlier else None


def fmt(value: float, unit: str) -> str:
    shown = {"Cel": "°C", "10*9/L": "×10⁹/L", "umol/L": "µmol/L", "/min": "/min", "mm[Hg]": "mmHg"}.get(unit, unit)
    if unit in {"U/L", "/min", "mm[Hg]"}:
        return f"{value:,.0f} {shown}"
    return f"{value:,.1f} {shown}"


def fmt_reading(reading: Reading) -> str:
    return f"{fmt(reading.value, reading.unit)} at {reading.time.strftime('%Y-%m-%d %H:%M')} UTC"


# --- criteria ---------------------------------------------------------------------------------------


def hyperthermia(temps: list[Reading], vs: ValueSets) -> tuple[Criterion, list[Reading]]:
    th = vs.thresholds["hyperthermia"]
    febrile = [r for r in temps if r.value > th["threshold_cel"]]
    met = len(febrile) >= th["min_readings"]
    if febrile:
        peak = max(febrile, key=lambda r: r.value)
        summary = (f"{len(febrile)} reading(s) > {th['threshold_cel']:.1f} °C in the last "
                   f"{vs.thresholds['window']['acute_hours']} h; max {fmt_reading(peak)}")
    elif temps:
        summary = f"no reading > {th['threshold_cel']:.1f} °C ({len(temps)} reading(s), max " \
                  f"{fmt(max(r.value for r in temps), 'Cel')})"
    else:
        summary = "no temperature recorded in the window"
    return Criterion("hyperthermia", f"Hyperthermia > {th['threshold_cel']:.1f} °C on ≥ {th['min_readings']} "
                     "occasions", th["points"], met if temps else None, th["points"] if met else 0, summary,
                     febrile or temps[-3:]), febrile


def ck_criterion(cks: list[Reading], sex: str | None, vs: ValueSets, set_aside: Sequence[Reading] = ()
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


def autonomic(sbp: list[Reading], dbp: list[Reading], base_s: Reading | None, base_d: Reading | None,
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
        swing = max_swing(series, span)
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


def max_swing(series: Sequence[Reading], span: timedelta) -> tuple[float, list[Reading]] | None:
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


def hypermetabolism(hr: list[Reading], rr: list[Reading], base_hr: Reading | None, base_rr: Reading | None,
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


def findings(series: dict[str, list[Reading]], lab_start: datetime, now: datetime,
              vs: ValueSets) -> list[Finding]:
    th_iron = vs.thresholds["iron"]
    th_ap = vs.thresholds["acute_phase"]
    out: list[Finding] = []
    iron_all = series.get("serum-iron", [])
    iron = in_window(iron_all, lab_start, now)
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
            words.append(f"falling from {fmt(before.value, 'umol/L')}")
        summary = f"serum iron {fmt_reading(low)}" + (": " + ", ".join(words) if words else " (normal)")
        out.append(Finding("iron-nms-range", in_range, summary, [r for r in (before, low) if r]))
        out.append(Finding("iron-low-or-falling", is_low or falling, summary, [r for r in (before, low) if r]))
    for concept, name, cmp, limit, text in (
        ("wbc", "leukocytosis", max, th_ap["wbc_high"], "WBC"),
        ("crp", "crp-raised", max, th_ap["crp_high"], "CRP"),
        ("albumin", "albumin-low", min, th_ap["albumin_low"], "albumin"),
    ):
        values = in_window(series.get(concept, []), lab_start, now)
        if not values:
            continue
        pick = cmp(values, key=lambda r: r.value)
        present = pick.value >= limit if cmp is max else pick.value < limit
        out.append(Finding(name, present, f"{text} {fmt_reading(pick)}", [pick]))
    return out


def nms_history(inp: ClinicalInput, vs: ValueSets) -> list[HistoryItem]:
    snomed_nms = vs.thresholds["history"]["snomed_nms"]
    out: list[HistoryItem] = []
    for item in inp.history:
        if (item.verification or "").lower() in {"entered-in-error", "refuted"}:
            continue
        coded = any(vs.is_condition("nms", c.system, c.code) or (c.system == SNOMED and c.code == snomed_nms)
                    for c in item.codings)
        text = " ".join(filter(None, [item.text, *(c.display or "" for c in item.codings)])).lower()
        named = "neuroleptic malignant" in text or "malignant neuroleptic" in text
        if coded or named:
            what = "Condition" if item.kind == "condition" else "AllergyIntolerance"
            label = item.text or next((c.display for c in item.codings if c.display), None) or "NMS"
            code = next((f"{vs.system_name(c.system)} {(c.code or '').strip()}" for c in item.codings
                         if vs.is_condition("nms", c.system, c.code) or c.code == snomed_nms), None)
            out.append(HistoryItem(item.kind, f"{what}: {label}" + (f" ({code})" if code else ""),
                                   item.recorded, item.ref))
    return out


def extreme_hyperthermia(temps: Sequence[Reading], vs: ValueSets) -> str | None:
    """``hyperthermia.extreme_min_readings`` readings >= ``extreme_cel`` or one >= ``extreme_single_cel``, in
    words; None otherwise."""
    th = vs.thresholds["hyperthermia"]
    if any(r.value >= th["extreme_single_cel"] for r in temps):
        return f"{fmt(max(r.value for r in temps), 'Cel')} ≥ {th['extreme_single_cel']:.1f} °C"
    high = [r for r in temps if r.value >= th["extreme_cel"]]
    if len(high) >= th["extreme_min_readings"]:
        return f"{len(high)} readings ≥ {th['extreme_cel']:.1f} °C"
    return None


_PENDING = frozenset({"registered", "preliminary"})


def ck_state(inp: ClinicalInput, vs: ValueSets, since: datetime) -> str:
    """"pending" when a CK of the episode is registered or preliminary (not yet final), else "missing"."""
    for obs in inp.observations:
        if obs.time is not None and since <= obs.time <= inp.now + FUTURE_SKEW and \
                (obs.status or "").strip().lower() in _PENDING and any(
                    (c := vs.observation(code)) is not None and c.concept == "creatine-kinase" for code in obs.codes):
            return "pending"
    return "missing"
