"""The NMS rules: exposure, and the assessment that joins reconciliation (:mod:`.reconcile`), episodes
(:mod:`.episodes`), the criteria (:mod:`.criteria`), other causes (:mod:`.causes`) and the indicator policy
(:mod:`.policy`). Pure functions; every threshold comes from ``data/thresholds.toml``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

from cds_service.clinical import criteria as ic
from cds_service.clinical.causes import other_causes
from cds_service.clinical.common import (
    EARLIEST,
    ENDED_STATUSES,
    EXCLUDED_STATUSES,
    FUTURE_SKEW,
    ONGOING_STATUSES,
    when_text,
)

# re-exported: the concepts (fhir/observations.py), the cards' reading format, and the BP-swing search that
# tests/web/test_limits.py times
from cds_service.clinical.criteria import LAB_CONCEPTS as LAB_CONCEPTS
from cds_service.clinical.criteria import VITAL_CONCEPTS as VITAL_CONCEPTS
from cds_service.clinical.criteria import fmt_reading as fmt_reading
from cds_service.clinical.criteria import max_swing as _max_swing  # noqa: F401
from cds_service.clinical.criteria import normalise
from cds_service.clinical.episodes import find_episode
from cds_service.clinical.model import Assessment, ClinicalInput, Criterion, Exposure, MedicationInput
from cds_service.clinical.policy import Facts, decide
from cds_service.clinical.reconcile import reconcile
from cds_service.clinical.valuesets import RXNORM, ValueSets, load

# --- medications ------------------------------------------------------------------------------------


def _route(med: MedicationInput, vs: ValueSets, hint: str, long_acting: bool = False) -> str | None:
    """The route the order states (coded, then in words); without one, the product's route only where the
    product allows no other (an oral form, a long-acting injectable: intramuscular only). A short-acting
    injection may be given IM or IV, so its route stays unknown (docs/clinical-rules.md)."""
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
    acute = {c: ic.in_window(series.get(c, []), acute_start, now) for c in VITAL_CONCEPTS}
    labs = {c: ic.in_window(series.get(c, []), lab_start, now) for c in LAB_CONCEPTS}

    hyper, febrile = ic.hyperthermia(acute["body-temperature"], vs)
    # Time order (docs/clinical-rules.md): with an episode under way, only exposures in effect before its onset
    # explain it; the draft never does. Without one, the record's exposures of now are the ones that count.
    episode = find_episode(series.get("body-temperature", []), febrile, labs["creatine-kinase"], inp.sex, vs,
                           _explaining_at(inp, vs, recognised))
    onset = episode.onset
    explaining = episode.explaining if onset is not None else _explaining(e for e in exposures if not e.is_draft)
    anchor = febrile[0].time if febrile else acute_start
    base = {c: ic.baseline(series.get(c, []), anchor, vs)
            for c in ("heart-rate", "respiratory-rate", "systolic-bp", "diastolic-bp")}
    episode_cks = [r for r in labs["creatine-kinase"] if episode.ck_from is None or r.time >= episode.ck_from]
    ck, ck_peak, ck_uln = ic.ck_criterion(episode_cks, inp.sex, vs, episode.set_aside)
    ck_ratio = ck_peak.value / ck_uln if ck_peak is not None and ck_uln else 0.0
    autonomic = ic.autonomic(acute["systolic-bp"], acute["diastolic-bp"], base["systolic-bp"],
                           base["diastolic-bp"], vs)
    hypermet = ic.hypermetabolism(acute["heart-rate"], acute["respiratory-rate"], base["heart-rate"],
                                base["respiratory-rate"], vs)
    criteria = [_exposure_criterion(explaining, exposures, onset, th), hyper, ck, autonomic, hypermet]
    findings = ic.findings(series, lab_start, now, vs)
    history = ic.nms_history(inp, vs)
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
    extreme = ic.extreme_hyperthermia(acute["body-temperature"], vs)
    ck_state = ic.ck_state(inp, vs, episode.ck_from or lab_start) if extreme and ck.met is None else None
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
        unreadable=list(inp.unreadable), duplicates=inp.duplicates,
        unidentified_medications=list(inp.unidentified_medications),
        baselines={c: r for c, r in base.items() if r is not None},
    )


def _ingredient(med: MedicationInput, vs: ValueSets) -> str | None:
    hit = classify(med, vs)
    return hit[0] if hit is not None else None


def _explaining_at(inp: ClinicalInput, vs: ValueSets, recognised: list[Exposure]
                   ) -> Callable[[datetime], list[Exposure]]:
    """The exposures (no drafts) in effect before a time; nothing before the first record of one began. Only the
    records of antagonists and dopaminergic drugs are looked at again (one look per CK rise before the fever)."""
    starts = [e.authored for e in recognised if not e.is_draft and e.role != "lithium"]
    first = None if any(t is None for t in starts) else min((t for t in starts if t is not None), default=None)
    relevant = replace(inp, medications=tuple(
        m for m in inp.medications if not m.is_draft and (hit := classify(m, vs)) is not None and hit[1] != "lithium"))

    def explaining_at(at: datetime) -> list[Exposure]:
        if not starts or (first is not None and at + FUTURE_SKEW < first):
            return []
        return _explaining(find_exposures(relevant, vs, at, drafts=False)[0])

    return explaining_at


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
