"""Deterministic generators of the benchmark's order-sign requests (synthetic data, no clock, seeded RNG).

Three scenarios (see ``bench/README.md``):

1. :func:`admission_request` - prefetch, realistic: a 7-day admission (vital signs every 4 h, daily labs,
   10 medication orders, about 200 resources) turning into the classic NMS picture, with a haloperidol draft
   order. The service's answer is one ``critical`` card.
2. :func:`long_record_request` - prefetch, long record: the same admission buried in ``n`` Observations of
   many codes (Synthea's common vital-sign and laboratory codes), few of them relevant. The EHR answers the
   ``vitals`` and ``labs`` keys by *category* (every vital-sign / laboratory Observation), as EHRs that do
   not support ``code`` OR-lists in prefetch do; the number of relevant Observations stays constant.
3. :func:`fhir_server_request` + :func:`transaction_bundle` - no prefetch: the admission loaded into the
   local FHIR server, the request names ``fhirServer`` and the service fetches every key itself.
4. :func:`fhir_server_request` + ``transaction_bundle(LONG_STAY_DAYS)`` - no prefetch, long stay: 45 days of
   4-hourly vital signs (about 1,100 Observations) with the same NMS episode at the end, served by the local
   FHIR server in its HAPI-like paging mode with a simulated cost of about 1 s per search.
5. :func:`icu_request` + :func:`icu_bundle` - no prefetch, dense record: an ICU stay with vital signs every
   15 minutes (about 3,900 Observations), served by the local FHIR server paging like HAPI at 250-500 ms a
   page (``tests/scenarios/test_icu_fetch.py``); with prefetch (:func:`icu_request` ``prefetch=``) it is critical.

Everything is built relative to :data:`cds_service.devtools.fixtures.ANCHOR`; run the service with
``NMS_CDS_FIXED_NOW`` set to it so that the clinical answer is the real one. Same arguments, same bytes.

    .venv/bin/python bench/scenarios.py OUT_DIR   # writes the request bodies and the FHIR bundle
"""

from __future__ import annotations

import json
import random
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cds_service.clinical.valuesets import LOINC, RXNORM, SNOMED, UCUM, load  # noqa: E402
from cds_service.devtools.fixtures import ANCHOR, fill_prefetch  # noqa: E402
from cds_service.services.templates import prefetch_templates  # noqa: E402

JsonDict = dict[str, Any]

PATIENT_ID = "bench-admission"
SEED = 20261124
HOOK_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:nms-cds:bench")
SYNTHETIC_TAG = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HTEST",
                 "display": "test health data"}
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ADMISSION_DAYS = 7
LONG_STAY_DAYS = 45  # scenario 4: a 45-day stay, served without prefetch by a HAPI-like paging server
VITALS_EVERY_HOURS = 4
ORAL = ("26643006", "Oral route")
IM = ("78421000", "Intramuscular route")
# The hooks the service answers (scenario 1 runs all three; ``service id`` as in cds_service.config.Settings).
HOOKS = {"order-sign": "nms-order-sign", "patient-view": "nms-patient-view", "order-select": "nms-order-select"}

# Common codes of the Synthea R4 sample records (datasets/synthea-r4/synthea3-healthwallet):
# (LOINC, display, UCUM unit, category, typical low, typical high). None of them is used by the rules;
# :func:`filler_catalogue` checks that against the value sets.
_FILLER: tuple[tuple[str, str, str, str, float, float], ...] = (
    ("29463-7", "Body Weight", "kg", "vital-signs", 60, 95),
    ("72514-3", "Pain severity - 0-10 verbal numeric rating [Score] - Reported", "{score}", "vital-signs", 0, 7),
    ("8302-2", "Body Height", "cm", "vital-signs", 160, 190),
    ("39156-5", "Body Mass Index", "kg/m2", "vital-signs", 19, 31),
    ("2708-6", "Oxygen saturation in Arterial blood", "%", "vital-signs", 90, 99),
    ("789-8", "Erythrocytes [#/volume] in Blood by Automated count", "10*6/uL", "laboratory", 3.9, 5.7),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", "laboratory", 11.2, 17.4),
    ("4544-3", "Hematocrit [Volume Fraction] of Blood by Automated count", "%", "laboratory", 35, 50),
    ("787-2", "MCV [Entitic volume] by Automated count", "fL", "laboratory", 80, 96),
    ("785-6", "MCH [Entitic mass] by Automated count", "pg", "laboratory", 26.7, 33),
    ("786-4", "MCHC [Mass/volume] by Automated count", "g/dL", "laboratory", 31.7, 36),
    ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", "laboratory", 150, 400),
    ("2339-0", "Glucose", "mg/dL", "laboratory", 64, 100),
    ("6299-2", "Urea Nitrogen", "mg/dL", "laboratory", 7, 19),
    ("49765-1", "Calcium", "mg/dL", "laboratory", 8.5, 10.2),
    ("2947-0", "Sodium", "mmol/L", "laboratory", 136, 144),
    ("2069-3", "Chloride", "mmol/L", "laboratory", 101, 111),
    ("20565-8", "Carbon Dioxide", "mmol/L", "laboratory", 20, 29),
    ("788-0", "Erythrocyte distribution width [Ratio] by Automated count", "%", "laboratory", 12.3, 15.4),
    ("33914-3", "Glomerular filtration rate/1.73 sq M.predicted", "mL/min", "laboratory", 60, 120),
    ("2885-2", "Protein [Mass/volume] in Serum or Plasma", "g/dL", "laboratory", 5.5, 8.2),
    ("1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma", "mg/dL", "laboratory", 0.4, 1.2),
    ("6768-6", "Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma", "U/L", "laboratory", 42, 116),
    ("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", "laboratory", 5, 43),
    ("1920-8", "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", "laboratory",
     5, 38),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", "laboratory", 5.1, 6.4),
    ("2093-3", "Total Cholesterol", "mg/dL", "laboratory", 161, 198),
    ("2571-8", "Triglycerides", "mg/dL", "laboratory", 100, 148),
    ("770-8", "Neutrophils/100 leukocytes in Blood by Automated count", "%", "laboratory", 40, 70),
    ("736-9", "Lymphocytes/100 leukocytes in Blood by Automated count", "%", "laboratory", 20, 40),
    ("5902-2", "Prothrombin time (PT)", "s", "laboratory", 10, 12.9),
    ("6301-6", "INR in Platelet poor plasma by Coagulation assay", "{INR}", "laboratory", 0.9, 1.2),
    ("2276-4", "Ferritin [Mass/volume] in Serum or Plasma", "ug/L", "laboratory", 50, 300),
    ("19123-9", "Magnesium [Mass/volume] in Serum or Plasma", "mg/dL", "laboratory", 1.8, 2.3),
)

# Non-dopaminergic, non-antagonist inpatient orders (RxNorm codes as they appear in the same Synthea records).
_OTHER_MEDS: tuple[tuple[str, str, float, str, int, tuple[str, str]], ...] = (
    ("854235", "0.4 ML Enoxaparin sodium 100 MG/ML Prefilled Syringe", 40, "mg", 1, ("34206005", "Subcutaneous route")),
    ("198440", "Acetaminophen 500 MG Oral Tablet", 1000, "mg", 4, ORAL),
    ("314076", "lisinopril 10 MG Oral Tablet", 10, "mg", 1, ORAL),
    ("313988", "Furosemide 40 MG Oral Tablet", 40, "mg", 1, ORAL),
    ("308192", "Amoxicillin 500 MG Oral Tablet", 500, "mg", 3, ORAL),
    ("309362", "Clopidogrel 75 MG Oral Tablet", 75, "mg", 1, ORAL),
    ("1049630", "diphenhydrAMINE Hydrochloride 25 MG Oral Tablet", 25, "mg", 1, ORAL),
    ("310965", "Ibuprofen 200 MG Oral Tablet", 400, "mg", 3, ORAL),
)


def at(hours: float) -> str:
    return (ANCHOR + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _coding(system: str, code: str, display: str) -> JsonDict:
    return {"system": system, "code": code, "display": display}


def _quantity(value: float, unit: str) -> JsonDict:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def filler_catalogue() -> tuple[tuple[str, str, str, str, float, float], ...]:
    """The irrelevant Observation codes; raises if one of them were used by the rules."""
    from cds_service.fhir.observations import relevant_loinc

    used = relevant_loinc()
    clash = [row[0] for row in _FILLER if row[0] in used]
    if clash:
        raise ValueError(f"filler codes used by the rules: {clash}")
    return _FILLER


class _Record:
    """One patient's resources; ids are ``bench-<kind>-<n>``."""

    def __init__(self) -> None:
        self.vs = load()
        self.resources: list[JsonDict] = []
        self.counters: dict[str, int] = {}
        self.subject = {"reference": f"Patient/{PATIENT_ID}"}
        self.encounter = {"reference": "Encounter/bench-encounter-1"}
        self.add({"resourceType": "Patient", "id": PATIENT_ID,
                  "identifier": [{"system": "urn:nms-cds:bench", "value": "admission"}],
                  "name": [{"text": "SYNTHETIC benchmark admission", "family": "Synthetic", "given": ["Bench"]}],
                  "gender": "male", "birthDate": "1979-05-14"})

    def next_id(self, kind: str) -> str:
        self.counters[kind] = self.counters.get(kind, 0) + 1
        return f"bench-{kind}-{self.counters[kind]}"

    def add(self, resource: JsonDict, kind: str | None = None) -> JsonDict:
        head: JsonDict = {"resourceType": resource["resourceType"],
                          "id": resource.get("id") or self.next_id(kind or resource["resourceType"].lower()),
                          "meta": {"tag": [SYNTHETIC_TAG]}}
        full = head | {k: v for k, v in resource.items() if k not in ("resourceType", "id")}
        self.resources.append(full)
        return full

    def observation(self, kind: str, code: str, display: str, hours: float, *, category: str,
                    value: float | None = None, unit: str | None = None,
                    ref: tuple[float | None, float | None] | None = None,
                    components: list[tuple[str, str, float, str]] | None = None, lab: bool = False) -> JsonDict:
        obs: JsonDict = {
            "resourceType": "Observation",
            "status": "final",
            "category": [{"coding": [_coding(OBS_CATEGORY, category, category.replace("-", " ").title())]}],
            "code": {"coding": [_coding(LOINC, code, display)], "text": display},
            "subject": self.subject,
            "encounter": self.encounter,
            "effectiveDateTime": at(hours),
        }
        if lab:
            obs["issued"] = at(hours + 1)
        if value is not None and unit is not None:
            obs["valueQuantity"] = _quantity(value, unit)
        if ref is not None and unit is not None:
            rng: JsonDict = {}
            if ref[0] is not None:
                rng["low"] = _quantity(ref[0], unit)
            if ref[1] is not None:
                rng["high"] = _quantity(ref[1], unit)
            obs["referenceRange"] = [rng]
        if components:
            obs["component"] = [{"code": {"coding": [_coding(LOINC, c, d)]}, "valueQuantity": _quantity(v, u)}
                                for c, d, v, u in components]
        return self.add(obs, kind)

    def known(self, code: str, unit: str) -> str:
        concept = self.vs.observation(code)
        if concept is None or unit not in concept.conversions:
            raise KeyError(f"LOINC {code} with unit {unit!r} is not in observations.tsv")
        return concept.display

    def vital(self, kind: str, code: str, hours: float, value: float, unit: str) -> None:
        self.observation(kind, code, self.known(code, unit), hours, category="vital-signs", value=value, unit=unit)

    def lab_result(self, kind: str, code: str, hours: float, value: float, unit: str,
                   ref: tuple[float | None, float | None]) -> None:
        self.observation(kind, code, self.known(code, unit), hours, category="laboratory", value=value, unit=unit,
                         ref=ref, lab=True)

    def med(self, code: str, display: str, *, status: str, hours: float, dose: float, unit: str, per_day: int,
            route: tuple[str, str], end_hours: float | None = None) -> JsonDict:
        mr: JsonDict = {
            "resourceType": "MedicationRequest",
            "status": status,
            "intent": "order",
            "medicationCodeableConcept": {"coding": [_coding(RXNORM, code, display)], "text": display},
            "subject": self.subject,
            "encounter": self.encounter,
            "authoredOn": at(hours),
            "dosageInstruction": [{
                "text": f"{dose:g} {unit} {per_day} times daily",
                "timing": {"repeat": {"frequency": per_day, "period": 1, "periodUnit": "d"}},
                "route": {"coding": [_coding(SNOMED, *route)]},
                "doseAndRate": [{"doseQuantity": _quantity(dose, unit)}],
            }],
        }
        if end_hours is not None:
            mr["dispenseRequest"] = {"validityPeriod": {"start": at(hours), "end": at(end_hours)}}
        return self.add(mr, "mr")


def _drug_display(code: str) -> str:
    concept = load().drug(code)
    if concept is None:
        raise KeyError(f"RxNorm {code} is not in the drug value sets")
    return concept.display


def _vital_signs(rec: _Record, hours: float, temp: float, hr: int, rr: int, sbp: int, dbp: int) -> None:
    """One time point's temperature, heart rate, respiratory rate and blood-pressure panel."""
    rec.vital("temp", "8310-5", hours, temp, "Cel")
    rec.vital("hr", "8867-4", hours, hr, "/min")
    rec.vital("rr", "9279-1", hours, rr, "/min")
    rec.observation("bp", "85354-9", rec.known("85354-9", "mm[Hg]"), hours, category="vital-signs",
                    components=[("8480-6", rec.known("8480-6", "mm[Hg]"), sbp, "mm[Hg]"),
                                ("8462-4", rec.known("8462-4", "mm[Hg]"), dbp, "mm[Hg]")])


def _daily_labs(rec: _Record, start: float, days: int) -> None:
    """Daily labs at 06:00 UTC (the anchor being noon): CK, serum iron, WBC, CRP, creatinine; the NMS course
    over the last ADMISSION_DAYS days, the first day's values before."""
    ck = (140, 150, 135, 160, 1900, 6800, 9400)
    iron = (18.0, 17.5, 18.2, 16.9, 9.8, 6.1, 5.4)
    wbc = (7.2, 7.6, 8.1, 7.9, 11.8, 14.2, 13.9)
    crp = (3.0, 2.8, 3.5, 4.1, 21.0, 45.0, 52.0)
    creat = (0.9, 0.9, 1.0, 0.9, 1.2, 1.5, 1.6)
    for day in range(days):
        hours = start + 24 * day + 18
        i = max(0, day - (days - ADMISSION_DAYS))
        rec.lab_result("ck", "2157-6", hours, ck[i], "U/L", (30, 200))
        rec.lab_result("iron", "14798-3", hours, iron[i], "umol/L", (13, 32))
        rec.lab_result("wbc", "6690-2", hours, wbc[i], "10*9/L", (4, 11))
        rec.lab_result("crp", "1988-5", hours, crp[i], "mg/L", (None, 5))
        rec.lab_result("creatinine", "2160-0", hours, creat[i], "mg/dL", (0.7, 1.3))


def admission_resources(days: int = ADMISSION_DAYS) -> list[JsonDict]:
    """Scenario 1's record: Patient, 10 MedicationRequests and ~200 Observations over a 7-day stay.

    ``days`` > 7 (scenario 4): a longer stay, the same last 7 days (labs before them at the first day's values).

    Admitted 7 days before the anchor with agitation; oral haloperidol from day -4, IM from day -2. Normal vital
    signs (baseline) until -36 h, then fever on three rounds, tachycardia, tachypnoea and labile blood pressure;
    CK rising to ~47 x ULN, serum iron falling, WBC and CRP up: the classic IEC picture (critical card).
    """
    rng = random.Random(SEED)
    rec = _Record()
    start = -days * 24
    haloperidol_po, haloperidol_im = "310672", "204416"
    rec.med(haloperidol_po, _drug_display(haloperidol_po), status="stopped", hours=-96, dose=5, unit="mg",
            per_day=2, route=ORAL, end_hours=-48)
    rec.med(haloperidol_im, _drug_display(haloperidol_im), status="active", hours=-48, dose=5, unit="mg",
            per_day=4, route=IM)
    for i, (code, display, dose, unit, per_day, route) in enumerate(_OTHER_MEDS):
        rec.med(code, display, status="active" if i % 3 else "completed", hours=start + 2 + 6 * i, dose=dose,
                unit=unit, per_day=per_day, route=route)

    # Vital signs every 4 h: temperature, heart rate, respiratory rate and a blood-pressure panel.
    for hours in range(start + 2, 0, VITALS_EVERY_HOURS):
        ill = hours >= -36
        peak = hours >= -24
        temp = round(38.3 + 0.1 * rng.randint(0, 12), 1) if ill and hours % 12 == 2 else round(
            36.6 + 0.1 * rng.randint(0, 6), 1)
        hr = (112 + rng.randint(0, 12)) if peak else (96 + rng.randint(0, 8)) if ill else 76 + rng.randint(0, 8)
        rr = (24 + rng.randint(0, 3)) if peak else (19 + rng.randint(0, 2)) if ill else 14 + rng.randint(0, 3)
        if peak:
            sbp, dbp = (150 + rng.randint(0, 20), 92 + rng.randint(0, 10)) if hours % 8 else (
                118 + rng.randint(0, 6), 72 + rng.randint(0, 6))
        else:
            sbp, dbp = 116 + rng.randint(0, 8), 72 + rng.randint(0, 6)
        _vital_signs(rec, hours, temp, hr, rr, sbp, dbp)

    _daily_labs(rec, start, days)
    return rec.resources


ICU_DAYS = 10  # scenario 5: an ICU stay with vital signs every 15 minutes
ICU_VITALS_EVERY_MINUTES = 15


def icu_resources(days: int = ICU_DAYS, every_minutes: int = ICU_VITALS_EVERY_MINUTES) -> list[JsonDict]:
    """Scenario 5's record: the admission's orders and daily labs, with vital signs every ``every_minutes``
    (temperature, heart rate, respiratory rate, blood-pressure panel) over ``days``: about 3,900 Observations
    for 10 days at 15 minutes. The same NMS course: febrile from -36 h (38.3-39.5 °C), tachycardia,
    tachypnoea and labile blood pressure from -24 h, CK to 47 x ULN: critical in every hook with prefetch.
    """
    rng = random.Random(SEED + 5)
    rec = _Record()
    start = -days * 24
    haloperidol_po, haloperidol_im = "310672", "204416"
    rec.med(haloperidol_po, _drug_display(haloperidol_po), status="stopped", hours=-96, dose=5, unit="mg",
            per_day=2, route=ORAL, end_hours=-48)
    rec.med(haloperidol_im, _drug_display(haloperidol_im), status="active", hours=-48, dose=5, unit="mg",
            per_day=4, route=IM)
    for i, (code, display, dose, unit, per_day, route) in enumerate(_OTHER_MEDS):
        rec.med(code, display, status="active" if i % 3 else "completed", hours=start + 2 + 6 * i, dose=dose,
                unit=unit, per_day=per_day, route=route)
    for step in range(days * 24 * 60 // every_minutes):
        hours = start + 0.5 + step * every_minutes / 60
        ill, peak = hours >= -36, hours >= -24
        temp = round(38.3 + 0.1 * rng.randint(0, 12), 1) if ill else round(36.6 + 0.1 * rng.randint(0, 6), 1)
        hr = (112 + rng.randint(0, 12)) if peak else (96 + rng.randint(0, 8)) if ill else 76 + rng.randint(0, 8)
        rr = (24 + rng.randint(0, 3)) if peak else (19 + rng.randint(0, 2)) if ill else 14 + rng.randint(0, 3)
        if peak and int(hours) % 8 < 4:
            sbp, dbp = 150 + rng.randint(0, 20), 92 + rng.randint(0, 10)
        elif peak:
            sbp, dbp = 118 + rng.randint(0, 6), 72 + rng.randint(0, 6)
        else:
            sbp, dbp = 116 + rng.randint(0, 8), 72 + rng.randint(0, 6)
        _vital_signs(rec, hours, temp, hr, rr, sbp, dbp)
    _daily_labs(rec, start, days)
    return rec.resources


def icu_request(fhir_base: str | None, hook: str = "order-sign", *, prefetch: JsonDict | None = None) -> JsonDict:
    """Scenario 5's request for ``hook``: ``fhirServer`` (no prefetch), or ``prefetch`` (no fhirServer)."""
    return _request(f"icu-{hook}", prefetch, fhir_server=fhir_base, hook=hook)


def icu_bundle() -> JsonDict:
    """Scenario 5's server data as a transaction Bundle of PUTs."""
    return {"resourceType": "Bundle", "type": "transaction",
            "entry": [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                      for r in icu_resources()]}


def draft_order() -> JsonDict:
    code = "204416"
    display = _drug_display(code)
    return {
        "resourceType": "MedicationRequest",
        "id": "bench-draft-haloperidol",
        "meta": {"tag": [SYNTHETIC_TAG]},
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {"coding": [_coding(RXNORM, code, display)], "text": display},
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "authoredOn": ANCHOR.date().isoformat(),
        "dosageInstruction": [{
            "text": "5 mg 4 times daily",
            "timing": {"repeat": {"frequency": 4, "period": 1, "periodUnit": "d"}},
            "route": {"coding": [_coding(SNOMED, *IM)]},
            "doseAndRate": [{"doseQuantity": _quantity(5, "mg")}],
        }],
    }


def _request(hook_key: str, prefetch: JsonDict | None, fhir_server: str | None = None,
             hook: str = "order-sign") -> JsonDict:
    """A CDS Hooks 2.0 request of ``hook`` for the bench patient (context as in ``cds_service/protocol/models.py``).

    ``order-sign``: ``draftOrders`` with the IM haloperidol draft; ``order-select``: the same draft, named in
    ``selections``; ``patient-view``: no draft at all (the chart's own orders are the exposure).
    """
    if hook not in HOOKS:
        raise ValueError(f"unknown hook {hook!r}")
    body: JsonDict = {
        "hook": hook,
        "hookInstance": str(uuid.uuid5(HOOK_NAMESPACE, hook_key)),
    }
    if fhir_server is not None:
        body["fhirServer"] = fhir_server
    context: JsonDict = {
        "userId": "Practitioner/bench-clinician",
        "patientId": PATIENT_ID,
        "encounterId": "bench-encounter-1",
    }
    if hook != "patient-view":
        draft = draft_order()
        if hook == "order-select":
            context["selections"] = [f"{draft['resourceType']}/{draft['id']}"]
        context["draftOrders"] = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft}]}
    body["context"] = context
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def hook_templates(hook: str = "order-sign") -> dict[str, str]:
    """The prefetch templates the service advertises for ``hook`` (its policy's own ``templates``)."""
    from cds_service.config import Settings
    from cds_service.services.engine import HookPolicy
    from cds_service.services.order_select import OrderSelectPolicy
    from cds_service.services.order_sign import OrderSignPolicy
    from cds_service.services.patient_view import PatientViewPolicy

    policies: dict[str, type[HookPolicy]] = {"order-sign": OrderSignPolicy, "order-select": OrderSelectPolicy,
                                             "patient-view": PatientViewPolicy}
    policy = policies[hook](Settings(auth="off"))  # type: ignore[call-arg]
    return dict(policy.templates)


def admission_request(hook: str = "order-sign") -> JsonDict:
    """Scenario 1: the admission, prefetch filled by ``hook``'s own templates (as a FHIR server would).

    ``hook="patient-view"`` / ``"order-select"``: scenario 1's variants for the other two hooks (same record,
    same IM haloperidol draft where the hook has drafts). Answer: the critical card for all three.
    """
    resources = admission_resources()
    key = "admission" if hook == "order-sign" else f"admission-{hook}"
    return _request(key, fill_prefetch(resources, hook_templates(hook), PATIENT_ID), hook=hook)


def long_record_resources(total_observations: int) -> list[JsonDict]:
    """The admission plus irrelevant Observations up to ``total_observations`` Observations in all."""
    resources = admission_resources()
    relevant = sum(1 for r in resources if r["resourceType"] == "Observation")
    extra = total_observations - relevant
    if extra < 0:
        raise ValueError(f"at least {relevant} observations (the admission's own) are needed")
    rng = random.Random(SEED + total_observations)
    catalogue = filler_catalogue()
    rec = _Record()
    rec.resources = []  # no second Patient
    span_hours = 5 * 365 * 24  # spread over five years of care before the anchor
    for i in range(extra):
        code, display, unit, category, low, high = catalogue[i % len(catalogue)]
        hours = -span_hours + (span_hours - 1) * i / max(extra, 1)
        value = round(low + (high - low) * rng.random(), 2)
        rec.observation("other", code, display, round(hours, 2), category=category, value=value, unit=unit,
                        lab=category == "laboratory")
    return resources + rec.resources


def _category(resource: JsonDict) -> str | None:
    for concept in resource.get("category") or []:
        for coding in concept.get("coding") or []:
            if coding.get("system") == OBS_CATEGORY:
                return str(coding.get("code"))
    return None


def _searchset(resources: list[JsonDict]) -> JsonDict:
    bundle: JsonDict = {"resourceType": "Bundle", "type": "searchset", "total": len(resources)}
    if resources:
        bundle["entry"] = [{"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
                           for r in resources]
    return bundle


def long_record_request(total_observations: int = 10_000) -> JsonDict:
    """Scenario 2: ``vitals``/``labs`` answered by category (all of them), the other keys by the templates."""
    resources = long_record_resources(total_observations)
    prefetch = fill_prefetch(resources, prefetch_templates(), PATIENT_ID)
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    temperature = {"8310-5"}
    prefetch["vitals"] = _searchset([r for r in observations if _category(r) == "vital-signs"
                                     and r["code"]["coding"][0]["code"] not in temperature])
    prefetch["labs"] = _searchset([r for r in observations if _category(r) == "laboratory"])
    return _request(f"long-record-{total_observations}", prefetch)


def fhir_server_request(fhir_base: str) -> JsonDict:
    """Scenario 3: no prefetch; the service queries ``fhir_base`` (anonymous, loopback)."""
    return _request("no-prefetch", None, fhir_server=fhir_base)


def transaction_bundle(days: int = ADMISSION_DAYS) -> JsonDict:
    """Scenario 3's server data: the admission as a transaction Bundle of PUTs (for ``fhir_server --load``).

    ``days=LONG_STAY_DAYS``: scenario 4's 45-day stay (about 1,100 vital-sign Observations).
    """
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                  for r in admission_resources(days)],
    }


def dumps(obj: Any) -> bytes:
    """Compact, stable JSON bytes (what the load generator sends)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def count_resources(request: JsonDict) -> dict[str, int]:
    """Resources per prefetch key (plus draft orders), for the report."""
    out: dict[str, int] = {}
    for key, value in (request.get("prefetch") or {}).items():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            out[key] = len(value.get("entry") or [])
        else:
            out[key] = 0 if value is None else 1
    drafts = request["context"].get("draftOrders")
    out["draftOrders"] = len(drafts["entry"]) if drafts else 0
    return out


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else Path("bench/generated")
    out.mkdir(parents=True, exist_ok=True)
    (out / "s1-admission.json").write_bytes(dumps(admission_request()))
    (out / "s2-long-record-10000.json").write_bytes(dumps(long_record_request(10_000)))
    fhir_dir = out / "fhir" / "bench-admission"
    fhir_dir.mkdir(parents=True, exist_ok=True)
    (fhir_dir / "bundle.json").write_bytes(dumps(transaction_bundle()))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
