"""Other causes of fever or CK rise weighed against NMS: the IEC's negative work-up, from structured data.

A cause is *found* only on evidence that documents it (a coded condition, a positive culture, a trigger drug);
evidence that only suggests it (an empiric antimicrobial) is *possible* and never closes a route of the
indicator policy. The drugs under assessment never count as their own other cause. docs/clinical-rules.md "Other causes
weighed" has the policy and its sources.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from cds_service.clinical.common import (
    EARLIEST,
    EXCLUDED_STATUSES,
    FUTURE_SKEW,
    ONGOING_STATUSES,
    USABLE_STATUSES,
    when_text,
)
from cds_service.clinical.model import ClinicalInput, HistoryInput, MedicationInput, OtherCause
from cds_service.clinical.valuesets import SNOMED, ValueSets

CAUSE_LABELS = {
    "infection": "Infection or sepsis",
    "serotonin-syndrome": "Serotonin syndrome",
    "malignant-hyperthermia": "Malignant hyperthermia",
    "heat-illness": "Heat illness",
    "anticholinergic": "Anticholinergic toxicity",
    "rhabdomyolysis": "Rhabdomyolysis from another cause (trauma, exertion)",
}
_KIND_WORDS = {"request": "order", "administration": "given", "statement": "reported"}
_ACTIVE_CONDITION = frozenset({"active", "recurrence", "relapse"})


class _Evidence:
    """What the record says about each cause: documenting, suggesting, and negative results."""

    def __init__(self) -> None:
        self.found: dict[str, list[str]] = {cause: [] for cause in CAUSE_LABELS}
        self.possible: dict[str, list[str]] = {cause: [] for cause in CAUSE_LABELS}
        self.negative: dict[str, list[str]] = {cause: [] for cause in CAUSE_LABELS}
        self.antimicrobials: dict[str, list[tuple[datetime, str]]] = {}  # ingredient -> (time, record in words)

    def antimicrobial_line(self) -> str | None:
        """The antimicrobials, one entry per drug: "treated with" when an infection is documented, else a
        possible infection that documents nothing."""
        if not self.antimicrobials:
            return None
        drugs = "; ".join(f"{name} ({max(records)[1]}" + (f", {len(records)} records)" if len(records) > 1 else ")")
                          for name, records in sorted(self.antimicrobials.items()))
        if self.found["infection"]:
            return "treated with " + drugs
        return "antimicrobial without a documented infection: " + drugs


def _groups(med: MedicationInput, vs: ValueSets) -> dict[str, set[str]]:
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
    return groups


def _drug_evidence(inp: ClinicalInput, vs: ValueSets, ev: _Evidence) -> None:
    th = vs.thresholds["other_causes"]
    now = inp.now
    exposure_window = timedelta(hours=vs.thresholds["exposure"]["window_hours"])
    # The drugs under assessment (dopamine antagonists, lithium) are never their own other cause.
    assessed = {n for n, role, _ in vs.drug_names if role in ("antagonist", "lithium")} | {"lithium"}
    serotonergic: dict[str, datetime | None] = {}
    for med in inp.medications:
        status = (med.status or "").lower()
        if status in EXCLUDED_STATUSES[med.kind] or med.do_not_perform:  # a prohibition is no drug taken
            continue
        groups = {g: names - assessed for g, names in _groups(med, vs).items()}
        groups = {g: names for g, names in groups.items() if names}
        if not groups:
            continue
        start, last = med.authored, med.ended or (med.authored if med.kind == "administration" else None)
        ongoing = status in ONGOING_STATUSES[med.kind] and (med.ended is None or med.ended > now)
        started = start is None or start <= now + FUTURE_SKEW

        def within(delta: timedelta, start: datetime | None = start, last: datetime | None = last,
                   ongoing: bool = ongoing, started: bool = started) -> bool:
            return started and (ongoing or (start is not None and start >= now - delta)
                                or (last is not None and last >= now - delta))

        what = f"{_KIND_WORDS[med.kind]}{' (draft)' if med.is_draft else ''}, {when_text(start)}"
        antimicrobial = groups.get("antibacterial", set()) | groups.get("antifungal", set())
        if antimicrobial and (med.is_draft or within(timedelta(days=th["antimicrobial_days"]))):
            for name in antimicrobial:
                ev.antimicrobials.setdefault(name, []).append((start or EARLIEST, what))
        if med.is_draft:
            continue
        if groups.get("mh-trigger") and within(timedelta(hours=th["mh_trigger_hours"])):
            ev.found["malignant-hyperthermia"].append(
                f"malignant-hyperthermia trigger {', '.join(sorted(groups['mh-trigger']))} ({what})")
        if groups.get("anticholinergic") and within(exposure_window):
            ev.found["anticholinergic"].append(
                f"strongly anticholinergic drug (ACB 3) {', '.join(sorted(groups['anticholinergic']))} ({what})")
        for ingredient in groups.get("serotonergic", set()):
            if within(exposure_window):
                known = serotonergic.get(ingredient, start)
                serotonergic[ingredient] = min(known, start) if known and start else (known or start)
    _serotonergic(serotonergic, now, th, ev)


def _serotonergic(serotonergic: dict[str, datetime | None], now: datetime, th: dict[str, Any],
                  ev: _Evidence) -> None:
    """Two serotonergic drugs together, or one started recently; a drug of ``serotonergic_only_combined``
    (weak serotonergic action: fentanyl, ondansetron) counts only next to a drug not on that list."""
    weak = set(th["serotonergic_only_combined"])
    strong = {i: t for i, t in serotonergic.items() if i not in weak}
    if not strong:
        return
    recent_start = now - timedelta(days=th["serotonergic_start_days"])
    started_recently = sorted(i for i, t in strong.items() if t is not None and t >= recent_start)
    if len(serotonergic) >= 2:
        ev.found["serotonin-syndrome"].append("serotonergic drugs combined: " + ", ".join(sorted(serotonergic)))
    elif started_recently:
        ev.found["serotonin-syndrome"].append(
            f"serotonergic drug started in the last {th['serotonergic_start_days']} days: "
            + ", ".join(started_recently))


def condition_name(item: HistoryInput, vs: ValueSets) -> str:
    """The Condition's text, else a coding's display, else the name of its code system."""
    if item.text and item.text.strip():
        return item.text.strip()
    display = next((c.display for c in item.codings if c.display and c.display.strip()), None)
    if display:
        return display.strip()
    system = next((c.system for c in item.codings if c.system), None)
    return "coded " + (vs.system_name(system) if system else "with an unnamed code system")


def _condition_evidence(inp: ClinicalInput, vs: ValueSets, ev: _Evidence) -> None:
    th = vs.thresholds["other_causes"]
    now = inp.now
    condition_window = timedelta(days=th["condition_days"])
    condition_groups: dict[str, str] = th["condition_groups"]
    for item in inp.history:
        if item.kind != "condition" or (item.verification or "").lower() in {"entered-in-error", "refuted"}:
            continue
        causes = (condition_groups.get(vs.cause_of(coding.system, (coding.code or "").strip()) or "")
                  for coding in item.codings)
        cause = next((c for c in causes if c), None)
        if cause is None or (item.recorded is not None and item.recorded > now + FUTURE_SKEW):
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
            ev.found[cause].append(f"Condition {condition_name(item, vs)} ({code}; {status or 'status not given'}, "
                                   f"recorded {when_text(item.recorded)})")


def _culture_evidence(inp: ClinicalInput, vs: ValueSets, lab_start: datetime, ev: _Evidence) -> None:
    for obs in inp.observations:
        if not set(obs.codes) & vs.culture_codes or obs.time is None or not lab_start <= obs.time <= inp.now:
            continue
        if (obs.status or "").lower() not in USABLE_STATUSES:
            continue
        results = [vs.culture_results.get((c.system or "", c.code or "")) for c in obs.value_codes]
        organism = any(r is None and c.system == SNOMED for r, c in zip(results, obs.value_codes, strict=True))
        if "positive" in results or organism:
            ev.found["infection"].append(f"positive blood culture {when_text(obs.time)}")
        elif "negative" in results:
            ev.negative["infection"].append(f"blood culture negative {when_text(obs.time)}")


def other_causes(inp: ClinicalInput, vs: ValueSets, lab_start: datetime) -> list[OtherCause]:
    """Evidence in the record for the other causes of fever or CK rise; found=None where the data needed
    to look were not available."""
    ev = _Evidence()
    _drug_evidence(inp, vs, ev)
    _condition_evidence(inp, vs, ev)
    _culture_evidence(inp, vs, lab_start, ev)
    if (line := ev.antimicrobial_line()) is not None:
        ev.possible["infection"].append(line)
    missing = " ".join(inp.missing).lower()
    no_drugs = "medication" in missing
    no_conditions = "condition" in missing
    out: list[OtherCause] = []
    for cause, label in CAUSE_LABELS.items():
        found: bool | None = bool(ev.found[cause])
        if not found and (no_drugs or (no_conditions and cause in ("infection", "heat-illness", "rhabdomyolysis"))):
            found = None
        out.append(OtherCause(cause, label, found, ev.found[cause][:6], ev.possible[cause][:6],
                              sorted(ev.negative[cause], reverse=True)[:6]))
    return out
