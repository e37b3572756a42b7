"""Prefetch templates of the order-sign service, built from the value sets.

Only CDS Hooks 2.0 tokens (``{{context.patientId}}``) are used, and the query subset the specification asks
clients to support (reference and token parameters by equality, ``_sort=-date`` and ``_count``) plus one
more: the medication records ask for the Medications they reference (``_include=MedicationRequest:medication``
and its MedicationAdministration / MedicationStatement equivalents, R4 search parameter ``medication``), so
that a record naming its drug only through ``medicationReference`` is identified from prefetch alone. A
client that drops ``_include`` still sends the records; the service then reads the Medications from
``fhirServer``, or, without one, counts the records it could not identify on every card. The same templates
drive the service's own FHIR queries when a prefetch key is absent, so both paths ask for exactly the same data.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

from cds_service.clinical.site import SiteKnowledge
from cds_service.clinical.valuesets import active, load

PATIENT = "{{context.patientId}}"


def _codes(codes: tuple[str, ...]) -> str:
    return ",".join(codes)


def prefetch_templates() -> dict[str, str]:
    """The templates of the knowledge in effect (a site's code maps add their codes to the searches)."""
    return _templates(active())


@lru_cache(maxsize=16)
def _templates(site: SiteKnowledge | None) -> dict[str, str]:
    vs = load(site)
    temperature = vs.query_codes("body-temperature")
    vitals = vs.query_codes("heart-rate", "respiratory-rate", "bp-panel", "systolic-bp", "diastolic-bp")
    labs = vs.query_codes(
        "creatine-kinase", "serum-iron", "wbc", "crp", "albumin", "creatinine", "potassium", "blood-culture"
    )
    # Every Condition of the patient: NMS history, and the infections and other causes of fever that the
    # rules weigh (ICD-10-CM categories such as A41 cannot be searched by prefix, so no code filter).
    return {
        "patient": f"Patient/{PATIENT}",
        "medications": f"MedicationRequest?patient={PATIENT}&_include=MedicationRequest:medication&_count=100",
        "administrations": f"MedicationAdministration?patient={PATIENT}"
                           "&_include=MedicationAdministration:medication&_count=100",
        "statements": f"MedicationStatement?patient={PATIENT}&_include=MedicationStatement:medication&_count=100",
        "temperature": f"Observation?patient={PATIENT}&code={_codes(temperature)}&_sort=-date&_count=100",
        "vitals": f"Observation?patient={PATIENT}&code={_codes(vitals)}&_sort=-date&_count=200",
        "labs": f"Observation?patient={PATIENT}&code={_codes(labs)}&_sort=-date&_count=100",
        "conditions": f"Condition?patient={PATIENT}&_count=100",
        "allergies": f"AllergyIntolerance?patient={PATIENT}&_count=100",
    }


def fhir_reads(templates: Mapping[str, str]) -> list[str]:
    """The resource types ``templates`` read, in template order, with Medication after the medication records
    (included with their searches, or read when a record names its drug by reference): what a FHIR server
    must allow."""
    types = list(dict.fromkeys(t.split("?", 1)[0].split("/", 1)[0] for t in templates.values()))
    medication_records = [i for i, t in enumerate(types) if t.startswith("Medication")]
    if medication_records and "Medication" not in types:
        types.insert(medication_records[-1] + 1, "Medication")
    return types
