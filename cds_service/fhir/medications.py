"""Medication exposure: orders (MedicationRequest), doses given (MedicationAdministration) and reported
medication (MedicationStatement) into the clinical core's medication records, with the Medications they
reference (contained, or fetched alongside)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cds_service.clinical.model import Coding, MedicationInput, MedicationKind
from cds_service.clinical.valuesets import RXNORM, load
from cds_service.fhir.extract import Extracted, codings_of, number_of, read_model, texts_of, when
from cds_service.fhir.models import parse
from cds_service.fhir.plain_json import plain_medication_request
from cds_service.fhir.versions import newest


def _medication_names(med: Any) -> tuple[tuple[Coding, ...], list[str]]:
    return codings_of(med.code), texts_of(med.code)


def medication_request(raw: Mapping[str, Any], *, is_draft: bool, patient_id: str | None,
                       medications: Mapping[str, Any], out: Extracted) -> MedicationInput | None:
    plain = plain_medication_request(raw, is_draft=is_draft)
    if plain is not None:
        return plain
    return parsed_medication_request(raw, is_draft=is_draft, patient_id=patient_id, medications=medications,
                                     out=out)


def parsed_medication_request(raw: Mapping[str, Any], *, is_draft: bool, patient_id: str | None,
                              medications: Mapping[str, Any], out: Extracted) -> MedicationInput | None:
    """The reference path: parse with the R4B model (defaults and repairs), then flatten."""
    defaults: dict[str, Any] = {"intent": "order"}
    if is_draft:
        defaults["status"] = "draft"
    if patient_id:
        defaults["subject"] = {"reference": f"Patient/{patient_id}"}
    mr = read_model(parse(raw, defaults), out, "draft-order" if is_draft else "medication")
    if mr is None:
        return None
    codings, names = _medication_concept(mr, medications)
    dosage = (mr.dosageInstruction or [None])[0]
    ended = when(mr.dispenseRequest.validityPeriod.end) if (
        mr.dispenseRequest and mr.dispenseRequest.validityPeriod) else None
    if dosage is not None:
        bounds = dosage.timing.repeat.boundsPeriod if (dosage.timing and dosage.timing.repeat) else None
        if bounds is not None and bounds.end is not None:
            ended = ended or when(bounds.end)
    return _from_model(mr, "request", is_draft=is_draft, codings=codings, names=names, dosage=dosage,
                       authored=when(mr.authoredOn), ended=ended, dose=_dose_quantity(dosage))


def _dose_quantity(dosage: Any) -> tuple[float | None, str | None]:
    """(value, unit) of a Dosage's first ``doseAndRate.doseQuantity``; (None, None) without one."""
    if dosage is not None and dosage.doseAndRate and dosage.doseAndRate[0].doseQuantity is not None:
        dq = dosage.doseAndRate[0].doseQuantity
        return number_of(dq.value), dq.code or dq.unit
    return None, None


_RESOURCE_OF_KIND = {"request": "MedicationRequest", "administration": "MedicationAdministration",
                     "statement": "MedicationStatement"}


def _from_model(model: Any, kind: MedicationKind, *, is_draft: bool, codings: tuple[Coding, ...], names: list[str],
                dosage: Any, authored: datetime | None, ended: datetime | None,
                dose: tuple[float | None, str | None]) -> MedicationInput:
    """The record of a parsed (R4B) order, administration or statement; ``dosage`` gives the route."""
    route = dosage.route if dosage is not None else None
    return MedicationInput(
        ref=f"{_RESOURCE_OF_KIND[kind]}/{model.id}" if model.id else None,
        is_draft=is_draft,
        status=model.status,
        codings=codings,
        names=tuple(dict.fromkeys(n for n in names if n)),
        route=codings_of(route),
        route_text=route.text if route is not None else None,
        authored=authored,
        ended=ended,
        dose_value=dose[0],
        dose_unit=dose[1],
        kind=kind,
        do_not_perform=getattr(model, "doNotPerform", None) is True,  # a prohibition: never exposure
    )


def _medication_concept(model: Any, medications: Mapping[str, Any]) -> tuple[tuple[Coding, ...], list[str]]:
    """Codings and names of ``medicationCodeableConcept`` or of the Medication ``medicationReference`` points to
    (contained, or given in ``medications`` by "Medication/<id>")."""
    if getattr(model, "medicationCodeableConcept", None) is not None:
        return codings_of(model.medicationCodeableConcept), texts_of(model.medicationCodeableConcept)
    codings: tuple[Coding, ...] = ()
    names: list[str] = []
    reference_element = getattr(model, "medicationReference", None)
    if reference_element is not None:
        reference = reference_element.reference or ""
        target: Any = None
        if reference.startswith("#"):
            target = next((c for c in (model.contained or []) if getattr(c, "id", None) == reference[1:]), None)
        elif reference:
            found = medications.get(reference.split("/_history")[0])
            target = parse(found).model if found else None
        if target is not None and getattr(target, "code", None) is not None:
            codings, names = _medication_names(target)
        if reference_element.display:
            names.append(reference_element.display)
    return codings, names


def _effective(resource: Any) -> tuple[datetime | None, datetime | None]:
    """``effective[x]`` of an administration or statement: (start, end); a dateTime is a start only."""
    start = when(resource.effectiveDateTime)
    end = None
    if resource.effectivePeriod is not None:
        start = start or when(resource.effectivePeriod.start)
        end = when(resource.effectivePeriod.end)
    return start, end


def medication_administration(raw: Mapping[str, Any], *, medications: Mapping[str, Any],
                              out: Extracted) -> MedicationInput | None:
    """A dose given: ``effective[x]`` is when (start and end of an infusion); the status decides whether it
    counts (the rules drop ``not-done`` and ``entered-in-error``)."""
    ma = read_model(parse(raw), out, "medication")
    if ma is None:
        return None
    codings, names = _medication_concept(ma, medications)
    start, end = _effective(ma)
    dose = ma.dosage.dose if ma.dosage is not None else None
    return _from_model(ma, "administration", is_draft=False, codings=codings, names=names, dosage=ma.dosage,
                       authored=start, ended=end or start,
                       dose=(number_of(dose.value), dose.code or dose.unit) if dose is not None else (None, None))


def medication_statement(raw: Mapping[str, Any], *, medications: Mapping[str, Any],
                         out: Extracted) -> MedicationInput | None:
    """Home or reported medication: ``effective[x]`` (period or date), else ``dateAsserted``, is when."""
    ms = read_model(parse(raw), out, "medication")
    if ms is None:
        return None
    codings, names = _medication_concept(ms, medications)
    start, end = _effective(ms)
    if start is None and end is None:
        start = when(ms.dateAsserted)
    dosage = (ms.dosage or [None])[0]
    return _from_model(ms, "statement", is_draft=False, codings=codings, names=names, dosage=dosage,
                       authored=start, ended=end, dose=_dose_quantity(dosage))


@dataclass
class ExposureRecords:
    """The raw exposure records of the gathered keys, by kind, and the Medications they may reference."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    administrations: list[dict[str, Any]] = field(default_factory=list)
    statements: list[dict[str, Any]] = field(default_factory=list)
    medications: dict[str, Any] = field(default_factory=dict)  # "Medication/<id>" -> resource
    duplicates: int = 0  # older versions (or differing repeats) of one order, dose or statement: not used

    def all(self) -> list[dict[str, Any]]:
        return self.requests + self.administrations + self.statements


_EXPOSURE_TYPES = {"MedicationRequest": "requests", "MedicationAdministration": "administrations",
                   "MedicationStatement": "statements"}


def exposure_records(data: Mapping[str, Any]) -> ExposureRecords:
    """Sort the resources of the medication keys (``medications``, ``administrations``, ``statements``, any
    that the hook's templates have) by kind; ``data`` maps key -> an object with ``resources``."""
    out = ExposureRecords()
    items = [data.get(key) for key in ("medications", "administrations", "statements")]
    listed = [raw for item in items if item is not None for raw in item.resources]
    seen = Extracted()
    for raw in newest(listed, seen):
        kind = raw.get("resourceType")
        if kind == "Medication":
            out.medications[f"Medication/{raw.get('id')}"] = raw
        elif kind in _EXPOSURE_TYPES:
            getattr(out, _EXPOSURE_TYPES[kind]).append(raw)
    out.duplicates = seen.duplicates
    return out


def _names_a_known_drug(raw: Mapping[str, Any]) -> bool:
    """Whether a record's ``medicationCodeableConcept`` names a drug any rule reads (exposure, withdrawal,
    lithium, other causes); a reference, or anything unusual, is parsed to find out. The rules ignore every other
    drug, so a long record of unrelated doses costs a dictionary look-up per dose instead of a model parse."""
    if "medicationCodeableConcept" not in raw:
        return True
    concept = raw["medicationCodeableConcept"]
    if not isinstance(concept, dict):
        return True
    vs = load()
    texts: list[str] = [concept["text"]] if isinstance(concept.get("text"), str) else []
    for coding in concept.get("coding") or []:
        if not isinstance(coding, dict):
            return True
        system, code = coding.get("system"), coding.get("code")
        if isinstance(code, str) and (
                (system in (RXNORM, None) and vs.drug(code.strip()) is not None)
                or vs.atc(system, code.strip()) is not None or vs.other_drug(system, code.strip()) is not None):
            return True
        if isinstance(coding.get("display"), str):
            texts.append(coding["display"])
    return any(vs.match_drug_name(t) is not None or vs.match_other_drug(t) for t in texts)


def administrations_and_statements(given: Iterable[Mapping[str, Any]], stated: Iterable[Mapping[str, Any]],
                                   medications: Mapping[str, Any], out: Extracted) -> None:
    """MedicationAdministration and MedicationStatement records into ``out.medications`` (any hook's service);
    records of drugs no rule reads are skipped before parsing."""
    for raw in given:
        if _names_a_known_drug(raw):
            med = medication_administration(raw, medications=medications, out=out)
            if med is not None:
                out.medications.append(med)
    for raw in stated:
        if _names_a_known_drug(raw):
            med = medication_statement(raw, medications=medications, out=out)
            if med is not None:
                out.medications.append(med)

