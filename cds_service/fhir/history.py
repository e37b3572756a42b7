"""History: Conditions and AllergyIntolerances into the clinical core's history records; the patient's sex."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cds_service.clinical.model import HistoryInput
from cds_service.fhir.extract import Extracted, codings_of, read_model, texts_of, when
from cds_service.fhir.models import parse
from cds_service.fhir.versions import newest


def history(resources: Iterable[Mapping[str, Any]], out: Extracted) -> None:
    for raw in newest([r for r in resources if r.get("resourceType") in ("Condition", "AllergyIntolerance")], out):
        kind = raw.get("resourceType")
        model = read_model(parse(raw), out, "condition" if kind == "Condition" else "allergy")
        if model is None:
            continue
        codings = list(codings_of(model.code))
        texts = texts_of(model.code)
        if kind == "AllergyIntolerance":
            for reaction in model.reaction or []:
                for manifestation in reaction.manifestation or []:
                    codings.extend(codings_of(manifestation))
                    texts.extend(texts_of(manifestation))
        verification = None
        if model.verificationStatus is not None and model.verificationStatus.coding:
            verification = model.verificationStatus.coding[0].code
        recorded = when(getattr(model, "recordedDate", None)) or when(getattr(model, "onsetDateTime", None))
        status = model.clinicalStatus.coding[0].code if (
            model.clinicalStatus is not None and model.clinicalStatus.coding) else None
        abated = when(getattr(model, "abatementDateTime", None))
        if abated is None and getattr(model, "abatementPeriod", None) is not None:
            abated = when(model.abatementPeriod.end)
        out.history.append(HistoryInput(
            "condition" if kind == "Condition" else "allergy", tuple(codings), "; ".join(texts) or None,
            recorded, verification, f"{kind}/{model.id}" if model.id else None, status, abated))


def patient_sex(resources: Iterable[Mapping[str, Any]]) -> str | None:
    for raw in resources:
        if raw.get("resourceType") == "Patient":
            gender = raw.get("gender")
            return gender if gender in ("male", "female") else None
    return None
