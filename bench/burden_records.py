"""Deterministic generator of hard-mimic records for ``make burden``: realistic patients WITHOUT NMS whose
data look like it (fever, CK rise, low iron, tachycardia), and who were never given a dopamine antagonist.

    records() -> list of {"id", "kind", "patient_id", "resources"}

Seven kinds, three variants each (``random.Random(seed)``, no clock): sepsis, COVID-19 pneumonia, neutropenic
fever (the German kidney-transplant record of the time-order work: ATC-coded antimicrobials in the BfArM system, serum
iron 12 ug/dL, no CK), post-operative fever, rhabdomyolysis after a fall, exercise CK rise and serotonin
syndrome. Codes come from ``cds_service/clinical/data``; every resource carries the HTEST tag (synthetic).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from cds_service.clinical.valuesets import ATC, ICD10CM, LOINC, RXNORM, SNOMED, UCUM

JsonDict = dict[str, Any]
ANCHOR = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)  # "admission + 5 days"; moments are found from the data
TAG = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HTEST", "display": "test health data"}
BFARM = "http://fhir.de/CodeSystem/bfarm/atc"
IV, ORAL = "47625008", "26643006"


class Record:
    def __init__(self, kind: str, variant: int) -> None:
        self.kind = kind
        self.pid = f"burden-{kind}-{variant}"
        self.rng = random.Random(f"{kind}:{variant}")
        self.resources: list[JsonDict] = []
        self.n = 0
        born = f"{1940 + self.rng.randrange(50)}-0{1 + self.rng.randrange(9)}-1{self.rng.randrange(9)}"
        self.add({"resourceType": "Patient", "id": self.pid, "gender": self.rng.choice(["male", "female"]),
                  "birthDate": born})

    def add(self, resource: JsonDict) -> JsonDict:
        if "id" not in resource:
            self.n += 1
            resource = {"resourceType": resource["resourceType"], "id": f"{self.pid}-{self.n}", **resource}
        resource["meta"] = {"tag": [TAG]}
        if resource["resourceType"] != "Patient":
            key = "patient" if resource["resourceType"] == "AllergyIntolerance" else "subject"
            resource[key] = {"reference": f"Patient/{self.pid}"}
        self.resources.append(resource)
        return resource

    @staticmethod
    def at(hours: float) -> str:
        return (ANCHOR + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def obs(self, code: str, hours: float, value: float, unit: str, *, high: float | None = None) -> None:
        resource: JsonDict = {"resourceType": "Observation", "status": "final",
                              "code": {"coding": [{"system": LOINC, "code": code}]},
                              "effectiveDateTime": self.at(hours),
                              "valueQuantity": {"value": round(value, 1), "unit": unit, "system": UCUM, "code": unit}}
        if high is not None:
            resource["referenceRange"] = [{"high": {"value": high, "unit": unit, "system": UCUM, "code": unit}}]
        self.add(resource)

    def vitals(self, hours: float, t: float, hr: float, rr: float, sbp: float, dbp: float) -> None:
        j = self.rng.uniform
        self.obs("8310-5", hours, t + j(-0.1, 0.1), "Cel")
        self.obs("8867-4", hours, hr + j(-4, 4), "/min")
        self.obs("9279-1", hours, rr + j(-1, 1), "/min")
        self.add({"resourceType": "Observation", "status": "final",
                  "code": {"coding": [{"system": LOINC, "code": "85354-9"}]}, "effectiveDateTime": self.at(hours),
                  "component": [
                      {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                       "valueQuantity": {"value": round(sbp + j(-5, 5)), "unit": "mm[Hg]", "system": UCUM,
                                         "code": "mm[Hg]"}},
                      {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                       "valueQuantity": {"value": round(dbp + j(-4, 4)), "unit": "mm[Hg]", "system": UCUM,
                                         "code": "mm[Hg]"}}]})

    def course(self, fever_from: float, fever_to: float, t_peak: float, hr: float, rr: float,
               bp: tuple[float, float]) -> None:
        """Baseline rounds from -120 h, then rounds every 6 h; febrile between ``fever_from`` and ``fever_to``."""
        for hours in range(-120, 1, 6):
            febrile = fever_from <= hours <= fever_to
            t = t_peak - self.rng.uniform(0, 0.7) if febrile else 36.7 + self.rng.uniform(0, 0.5)
            self.vitals(hours, t, hr if febrile else 78, rr if febrile else 16, *(bp if febrile else (122, 76)))

    def condition(self, system: str, code: str, hours: float, *, status: str = "active") -> None:
        self.add({"resourceType": "Condition",
                  "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                                 "code": status}]},
                  "verificationStatus": {"coding": [{
                      "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
                  "code": {"coding": [{"system": system, "code": code}]},
                  "onsetDateTime": self.at(hours), "recordedDate": self.at(hours)})

    def given(self, system: str, code: str, text: str, hours: float, route: str = IV) -> None:
        self.add({"resourceType": "MedicationAdministration", "status": "completed",
                  "medicationCodeableConcept": {"coding": [{"system": system, "code": code}], "text": text},
                  "effectiveDateTime": self.at(hours),
                  "dosage": {"route": {"coding": [{"system": SNOMED, "code": route}]}}})

    def ordered(self, text: str, hours: float, *, status: str = "active") -> None:
        self.add({"resourceType": "MedicationRequest", "status": status, "intent": "order",
                  "medicationCodeableConcept": {"text": text}, "authoredOn": self.at(hours)})

    def stated(self, text: str, start_hours: float) -> None:
        self.add({"resourceType": "MedicationStatement", "status": "active",
                  "medicationCodeableConcept": {"text": text}, "effectivePeriod": {"start": self.at(start_hours)}})


def sepsis(r: Record) -> None:
    onset = -60 + r.rng.randrange(12)
    r.course(onset, 0, 39.4, 116, 25, (100, 58))
    r.condition(ICD10CM, "A41.9", onset + 2)
    for h in range(onset + 3, 1, 8):
        r.given(ATC, "J01CR05", "piperacillin/tazobactam 4.5 g", h)
    r.obs("6690-2", onset + 4, r.rng.uniform(15, 22), "10*9/L")
    r.obs("1988-5", onset + 4, r.rng.uniform(120, 250), "mg/L")
    r.obs("14798-3", onset + 4, r.rng.uniform(4, 8), "umol/L")
    r.obs("2157-6", onset + 4, r.rng.uniform(60, 180), "U/L", high=200)


def covid_pneumonia(r: Record) -> None:
    onset = -96 + r.rng.randrange(24)
    r.course(onset, -6, 39.1, 102, 24, (118, 72))
    r.condition(ICD10CM, "U07.1", onset)
    r.condition(ICD10CM, "J12.82", onset + 20)
    r.obs("6690-2", onset + 10, r.rng.uniform(4, 8), "10*9/L")
    r.obs("1988-5", onset + 10, r.rng.uniform(60, 140), "mg/L")
    r.obs("14798-3", onset + 10, r.rng.uniform(3, 7), "umol/L")
    r.obs("2157-6", onset + 10, r.rng.uniform(180, 420), "U/L", high=200)
    r.ordered("dexamethasone 6 mg", onset + 20)


def neutropenic_fever_german(r: Record) -> None:
    onset = -48 + r.rng.randrange(6)
    r.course(onset, 0, 39.3, 108, 21, (116, 70))
    r.condition(SNOMED, "409089005", onset)
    for h in range(onset + 2, 1, 12):
        r.given(BFARM, "J01DD01", "Cefotaxim 2 g i.v.", h)
        r.given(BFARM, "J01XD01", "Metronidazol 500 mg i.v.", h + 1)
    r.given(BFARM, "J02AA01", "Amphotericin B liposomal", onset + 26)
    r.stated("Tacrolimus 2 mg", -24 * 400)
    r.obs("2498-4", onset + 20, 12, "ug/dL")  # 2.1 umol/L: "in the NMS range"; no CK in the record
    r.obs("6690-2", onset + 20, r.rng.uniform(0.2, 0.6), "10*9/L")
    r.obs("1988-5", onset + 20, r.rng.uniform(120, 200), "mg/L")


def postoperative_fever(r: Record) -> None:
    r.given(ATC, "J01DB04", "cefazolin 2 g IV (perioperative)", -50)
    r.course(-40, -12, 38.7, 96, 20, (130, 80))
    r.obs("2157-6", -30, r.rng.uniform(500, 780), "U/L", high=200)
    r.obs("6690-2", -30, r.rng.uniform(11, 14), "10*9/L")
    r.obs("1988-5", -30, r.rng.uniform(80, 150), "mg/L")


def rhabdomyolysis_fall(r: Record) -> None:
    r.course(-30, -30, 38.3, 98, 18, (138, 84))  # one febrile round at most
    r.condition(SNOMED, "240131006", -40)
    for h, ck in ((-44, 18000), (-30, 32000), (-12, 21000)):
        r.obs("2157-6", h, ck * r.rng.uniform(0.8, 1.2), "U/L", high=200)
    r.obs("2823-3", -44, r.rng.uniform(5.2, 6.0), "mmol/L")
    r.obs("2160-0", -44, r.rng.uniform(150, 220), "umol/L")


def exercise_ck(r: Record) -> None:
    r.course(999, 999, 37.0, 80, 16, (122, 76))  # afebrile throughout
    r.obs("2157-6", -20, r.rng.uniform(4000, 12000), "U/L", high=200)
    r.obs("2157-6", -4, r.rng.uniform(2000, 6000), "U/L", high=200)


def serotonin_syndrome(r: Record) -> None:
    r.stated("sertraline 100 mg daily", -24 * 90)
    r.ordered("tramadol 50 mg every 6 hours", -40)
    r.course(-30, 0, 39.2, 124, 24, (150, 92))
    r.obs("2157-6", -20, r.rng.uniform(400, 700), "U/L", high=200)
    r.obs("6690-2", -20, r.rng.uniform(10, 13), "10*9/L")


KINDS: dict[str, Callable[[Record], None]] = {
    "sepsis": sepsis, "covid-19-pneumonia": covid_pneumonia, "neutropenic-fever-german": neutropenic_fever_german,
    "post-operative-fever": postoperative_fever, "rhabdomyolysis-fall": rhabdomyolysis_fall,
    "exercise-ck": exercise_ck, "serotonin-syndrome": serotonin_syndrome,
}
VARIANTS = 3


def records() -> list[JsonDict]:
    out = []
    for kind, build in KINDS.items():
        for variant in range(VARIANTS):
            record = Record(kind, variant)
            build(record)
            out.append({"id": record.pid, "kind": kind, "patient_id": record.pid, "resources": record.resources})
    return out


__all__ = ["ANCHOR", "KINDS", "RXNORM", "records"]
