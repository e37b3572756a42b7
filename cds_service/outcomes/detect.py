"""The outcomes after a card in one patient's record (plain FHIR R4 JSON in, dated outcome events out).

An outcome counts when it is dated at or after the card and within the horizon:

- ``nms-coded``: a Condition coded as NMS (the ``nms`` rows of conditions.tsv), dated by ``recordedDate`` or
  ``onset``;
- ``specific-treatment``: dantrolene or bromocriptine ordered (``authoredOn``) or given (``effective``);
- ``antagonist-stopped``: an order of a dopamine antagonist stopped, cancelled or completed, dated by the end
  of its validity or dosage bounds, or a statement of one ended; an order stopped without an end date is not
  counted (``meta.lastUpdated`` says when the record changed, which a copy or a reload also changes);
- ``icu-transfer``: an Encounter or encounter location of an intensive care unit starting.

Only the outcome's kind and time leave this module.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any

from cds_service.clinical.valuesets import ATC, RXNORM, load
from cds_service.fhir.plain_types import plain_datetime as when  # a FHIR dateTime string, as the fast path reads it

KINDS = ("nms-coded", "specific-treatment", "antagonist-stopped", "icu-transfer")
_STOPPED = {"stopped", "cancelled", "completed"}
_STATEMENT_ENDED = {"stopped", "completed", "not-taken"}


@dataclass(frozen=True)
class Event:
    kind: str
    at: datetime


@dataclass(frozen=True)
class OutcomeCodes:
    treatment_codes: frozenset[tuple[str, str]]
    treatment_names: frozenset[str]
    icu_codes: frozenset[tuple[str, str]]


@cache
def codes() -> OutcomeCodes:
    text = resources.files("cds_service.outcomes").joinpath("data/outcome-codes.tsv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    drugs = [r for r in rows if r["outcome"] == "specific-treatment"]
    treatment = {(r["system"], r["code"]) for r in drugs if r["system"] != "name"}
    names = {r["code"] for r in drugs if r["system"] == "name"}
    icu = {(r["system"], r["code"]) for r in rows if r["outcome"] == "icu-transfer"}
    return OutcomeCodes(frozenset(treatment), frozenset(names), frozenset(icu))


def _codings(concept: Any) -> list[Mapping[str, Any]]:
    if not isinstance(concept, Mapping):
        return []
    return [c for c in concept.get("coding") or [] if isinstance(c, Mapping)]


def _texts(concept: Any) -> list[str]:
    if not isinstance(concept, Mapping):
        return []
    texts = [concept["text"]] if isinstance(concept.get("text"), str) else []
    return texts + [str(c["display"]) for c in _codings(concept) if isinstance(c.get("display"), str)]


def drug_roles(concept: Any) -> set[str]:
    """The rules' roles ("antagonist", "dopaminergic", ...) and the outcome table's treatments a medication
    concept names, by code first, then by name."""
    vs, table = load(), codes()
    found: set[str] = set()
    for coding in _codings(concept):
        system, code = coding.get("system"), str(coding.get("code") or "").strip()
        drug = vs.drug(code) if system in (RXNORM, None) else vs.atc(system, code) if system == ATC else None
        if drug is not None:
            found.add(drug.role)
            found.update(f"ingredient:{i}" for i in drug.ingredients)
        if (str(system), code) in table.treatment_codes:
            found.add("treatment")
    for text in _texts(concept):
        named = vs.match_drug_name(text)
        if named is not None:
            found.add(named[1])
            found.add(f"ingredient:{named[0]}")
        if any(word in table.treatment_names for word in text.lower().replace("-", " ").split()):
            found.add("treatment")
    if "ingredient:bromocriptine" in found:
        found.add("treatment")
    return found


def medication_concept(resource: Mapping[str, Any], medications: Mapping[str, Any]) -> Any:
    if "medicationCodeableConcept" in resource:
        return resource["medicationCodeableConcept"]
    ref = resource.get("medicationReference")
    target = ref.get("reference") if isinstance(ref, Mapping) else None
    if isinstance(target, str) and target.startswith("#"):
        for contained in resource.get("contained") or []:
            if isinstance(contained, Mapping) and contained.get("id") == target[1:]:
                return contained.get("code")
    med = medications.get(str(target))
    return med.get("code") if isinstance(med, Mapping) else None


def effective_start(resource: Mapping[str, Any]) -> datetime | None:
    period = resource.get("effectivePeriod")
    if isinstance(period, Mapping):
        return when(period.get("start"))
    return when(resource.get("effectiveDateTime"))


def request_end(resource: Mapping[str, Any]) -> datetime | None:
    validity = (resource.get("dispenseRequest") or {}).get("validityPeriod") if isinstance(
        resource.get("dispenseRequest"), Mapping) else None
    end = when(validity.get("end")) if isinstance(validity, Mapping) else None
    for dosage in resource.get("dosageInstruction") or []:
        repeat = ((dosage or {}).get("timing") or {}).get("repeat") if isinstance(dosage, Mapping) else None
        bounds = repeat.get("boundsPeriod") if isinstance(repeat, Mapping) else None
        if end is None and isinstance(bounds, Mapping):
            end = when(bounds.get("end"))
    return end


def _is_icu(concepts: Iterable[Any]) -> bool:
    icu = codes().icu_codes
    return any((str(c.get("system")), str(c.get("code"))) in icu for concept in concepts for c in _codings(concept))


def _encounter_events(resource: Mapping[str, Any]) -> list[Event]:
    out: list[Event] = []
    period: Mapping[str, Any] = resource["period"] if isinstance(resource.get("period"), Mapping) else {}
    whole = [resource.get("class"), *(resource.get("type") or []), resource.get("serviceType")]
    # Encounter.class is a bare Coding: wrap it so one reader serves both shapes
    whole = [{"coding": [c]} if isinstance(c, Mapping) and "code" in c else c for c in whole]
    if _is_icu(whole) and (start := when(period.get("start"))) is not None:
        out.append(Event("icu-transfer", start))
    for loc in resource.get("location") or []:
        if not isinstance(loc, Mapping):
            continue
        loc_period: Mapping[str, Any] = loc["period"] if isinstance(loc.get("period"), Mapping) else {}
        if _is_icu([loc.get("physicalType")]) and (start := when(loc_period.get("start"))) is not None:
            out.append(Event("icu-transfer", start))
    return out


def events(record: Iterable[Mapping[str, Any]], medications: Mapping[str, Any] | None = None) -> list[Event]:
    """Every dated outcome event in one patient's resources (any time; :func:`after` picks the window)."""
    vs = load()
    meds = medications or {}
    out: list[Event] = []
    for r in record:
        kind = r.get("resourceType")
        if kind == "Condition":
            if any(vs.is_condition("nms", c.get("system"), c.get("code")) for c in _codings(r.get("code"))):
                at = when(r.get("recordedDate")) or when(r.get("onsetDateTime"))
                if at is not None:
                    out.append(Event("nms-coded", at))
        elif kind in ("MedicationRequest", "MedicationAdministration", "MedicationStatement"):
            roles = drug_roles(medication_concept(r, meds))
            status = str(r.get("status") or "").strip().lower()
            started = when(r.get("authoredOn")) if kind == "MedicationRequest" else effective_start(r)
            if "treatment" in roles and started is not None and status not in ("entered-in-error", "cancelled"):
                out.append(Event("specific-treatment", started))
            if "antagonist" in roles:
                ended: datetime | None = None
                if kind == "MedicationRequest" and status in _STOPPED:
                    ended = request_end(r)
                elif kind == "MedicationStatement" and status in _STATEMENT_ENDED:
                    period = r.get("effectivePeriod")
                    ended = when(period.get("end")) if isinstance(period, Mapping) else None
                if ended is not None:
                    out.append(Event("antagonist-stopped", ended))
        elif kind == "Encounter":
            out.extend(_encounter_events(r))
    return sorted(out, key=lambda e: (e.at, e.kind))


def after(found: Iterable[Event], card_at: datetime, horizon: timedelta) -> dict[str, datetime]:
    """The first event of each kind in ``[card_at, card_at + horizon]``."""
    first: dict[str, datetime] = {}
    for e in found:
        if card_at <= e.at <= card_at + horizon and e.kind not in first:
            first[e.kind] = e.at
    return first
