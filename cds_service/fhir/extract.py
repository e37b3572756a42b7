"""Flatten FHIR R4 resources into the clinical core's plain records.

Raw JSON is filtered by resource type and code *before* it is parsed with the R4B models, so a long
record costs time in proportion to the relevant observations, not to its size. Parsing is lenient
(:func:`cds_service.fhir.models.parse`); what cannot be read is counted, never fatal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cache
from typing import Any

from cds_service.clinical.model import Coding, HistoryInput, MedicationInput, ObservationInput
from cds_service.clinical.rules import LAB_CONCEPTS, VITAL_CONCEPTS
from cds_service.clinical.valuesets import LOINC, load
from cds_service.fhir.models import parse


@dataclass
class Extracted:
    medications: list[MedicationInput] = field(default_factory=list)
    observations: list[ObservationInput] = field(default_factory=list)
    history: list[HistoryInput] = field(default_factory=list)
    sex: str | None = None
    unreadable: int = 0  # resources dropped because they could not be parsed
    repairs: int = 0


def when(value: Any) -> datetime | None:
    """A FHIR date/dateTime/instant as an aware UTC datetime; partial dates (YYYY-MM) give None."""
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return None


def _num(value: Any) -> float | None:
    if isinstance(value, Decimal | int | float) and not isinstance(value, bool):
        number = float(value)
        return number if number == number and abs(number) != float("inf") else None
    return None


def _codings(concept: Any) -> tuple[Coding, ...]:
    if concept is None:
        return ()
    return tuple(Coding(c.system, c.code, c.display) for c in (concept.coding or []))


def _texts(concept: Any) -> list[str]:
    if concept is None:
        return []
    out = [concept.text] if concept.text else []
    out.extend(c.display for c in (concept.coding or []) if c.display)
    return out


@cache
def relevant_loinc() -> frozenset[str]:
    vs = load()
    wanted = set(VITAL_CONCEPTS) | set(LAB_CONCEPTS) | {"bp-panel"}
    return frozenset(code for code, c in vs.observations_by_code.items() if c.concept in wanted)


def _raw_codes(resource: Mapping[str, Any]) -> set[str]:
    codes: set[str] = set()
    concept = resource.get("code")
    if isinstance(concept, dict):
        for coding in concept.get("coding") or []:
            if not isinstance(coding, dict) or coding.get("system") not in (LOINC, None):
                continue
            if isinstance(coding.get("code"), str):
                codes.add(coding["code"])
    return codes


def observations(resources: Iterable[Mapping[str, Any]], out: Extracted) -> None:
    wanted = relevant_loinc()
    for raw in resources:
        if raw.get("resourceType") != "Observation" or not (_raw_codes(raw) & wanted):
            continue
        result = parse(raw)
        out.repairs += bool(result.repairs)
        obs = result.model
        if obs is None:
            out.unreadable += 1
            continue
        time = when(obs.effectiveDateTime) or when(obs.effectiveInstant) or (
            when(obs.effectivePeriod.start) if obs.effectivePeriod else None) or when(obs.issued)
        ref = f"Observation/{obs.id}" if obs.id else None
        codes = tuple(c.code for c in (obs.code.coding or []) if c.code and c.system in (LOINC, None))
        low = high = None
        ref_unit = None
        if obs.referenceRange:
            rr = obs.referenceRange[0]
            if rr.high is not None:
                high, ref_unit = _num(rr.high.value), rr.high.code or rr.high.unit
            if rr.low is not None:
                low = _num(rr.low.value)
        if obs.valueQuantity is not None or not obs.component:
            q = obs.valueQuantity
            out.observations.append(ObservationInput(
                ref, obs.status, codes, _num(q.value) if q else None, (q.code or q.unit) if q else None,
                time, low, high, ref_unit))
        for comp in obs.component or []:
            comp_codes = tuple(c.code for c in (comp.code.coding or []) if c.code and c.system in (LOINC, None))
            q = comp.valueQuantity
            if not (set(comp_codes) & wanted):
                continue
            out.observations.append(ObservationInput(
                ref, obs.status, comp_codes, _num(q.value) if q else None, (q.code or q.unit) if q else None, time))


def _medication_names(med: Any) -> tuple[tuple[Coding, ...], list[str]]:
    return _codings(med.code), _texts(med.code)


def medication_request(raw: Mapping[str, Any], *, is_draft: bool, patient_id: str | None,
                       medications: Mapping[str, Any], out: Extracted) -> MedicationInput | None:
    defaults: dict[str, Any] = {"intent": "order"}
    if is_draft:
        defaults["status"] = "draft"
    if patient_id:
        defaults["subject"] = {"reference": f"Patient/{patient_id}"}
    result = parse(raw, defaults)
    out.repairs += bool(result.repairs)
    mr = result.model
    if mr is None:
        out.unreadable += 1
        return None
    codings: tuple[Coding, ...] = ()
    names: list[str] = []
    if mr.medicationCodeableConcept is not None:
        codings = _codings(mr.medicationCodeableConcept)
        names = _texts(mr.medicationCodeableConcept)
    elif mr.medicationReference is not None:
        reference = mr.medicationReference.reference or ""
        target: Any = None
        if reference.startswith("#"):
            target = next((c for c in (mr.contained or []) if getattr(c, "id", None) == reference[1:]), None)
        elif reference:
            found = medications.get(reference.split("/_history")[0])
            target = parse(found).model if found else None
        if target is not None and getattr(target, "code", None) is not None:
            codings, names = _medication_names(target)
        if mr.medicationReference.display:
            names.append(mr.medicationReference.display)
    dosage = (mr.dosageInstruction or [None])[0]
    route = dosage.route if dosage is not None else None
    dose_value = dose_unit = None
    ended = when(mr.dispenseRequest.validityPeriod.end) if (
        mr.dispenseRequest and mr.dispenseRequest.validityPeriod) else None
    if dosage is not None:
        if dosage.doseAndRate and dosage.doseAndRate[0].doseQuantity is not None:
            dq = dosage.doseAndRate[0].doseQuantity
            dose_value, dose_unit = _num(dq.value), dq.code or dq.unit
        bounds = dosage.timing.repeat.boundsPeriod if (dosage.timing and dosage.timing.repeat) else None
        if bounds is not None and bounds.end is not None:
            ended = ended or when(bounds.end)
    return MedicationInput(
        ref=f"MedicationRequest/{mr.id}" if mr.id else None,
        is_draft=is_draft,
        status=mr.status,
        codings=codings,
        names=tuple(dict.fromkeys(n for n in names if n)),
        route=_codings(route),
        route_text=route.text if route is not None else None,
        authored=when(mr.authoredOn),
        ended=ended,
        dose_value=dose_value,
        dose_unit=dose_unit,
    )


def history(resources: Iterable[Mapping[str, Any]], out: Extracted) -> None:
    for raw in resources:
        kind = raw.get("resourceType")
        if kind not in ("Condition", "AllergyIntolerance"):
            continue
        model = parse(raw).model
        if model is None:
            out.unreadable += 1
            continue
        codings = list(_codings(model.code))
        texts = _texts(model.code)
        if kind == "AllergyIntolerance":
            for reaction in model.reaction or []:
                for manifestation in reaction.manifestation or []:
                    codings.extend(_codings(manifestation))
                    texts.extend(_texts(manifestation))
        verification = None
        if model.verificationStatus is not None and model.verificationStatus.coding:
            verification = model.verificationStatus.coding[0].code
        recorded = when(getattr(model, "recordedDate", None)) or when(getattr(model, "onsetDateTime", None))
        out.history.append(HistoryInput(
            "condition" if kind == "Condition" else "allergy", tuple(codings), "; ".join(texts) or None,
            recorded, verification, f"{kind}/{model.id}" if model.id else None))


def patient_sex(resources: Iterable[Mapping[str, Any]]) -> str | None:
    for raw in resources:
        if raw.get("resourceType") == "Patient":
            gender = raw.get("gender")
            return gender if gender in ("male", "female") else None
    return None
