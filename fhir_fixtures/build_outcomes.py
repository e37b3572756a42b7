"""Deterministic generator of what happened after the cards: ``fhir_fixtures/outcomes/<scenario-id>.json``.

    .venv/bin/python fhir_fixtures/build_outcomes.py [OUT_DIR]

Each file is a FHIR R4 collection Bundle of SYNTHETIC resources dated relative to
``cds_service.devtools.fixtures.ANCHOR`` (the moment the scenarios are assessed): an NMS diagnosis coded,
dantrolene given, the dopamine antagonist stopped, a transfer to intensive care. ``nms-cds report --outcomes``
is tested on these known numbers (tests/outcomes/test_outcome_report.py). Output is byte-for-byte stable.
"""

from __future__ import annotations

import json
import shutil
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cds_service.clinical.valuesets import ATC, ICD10, SNOMED  # noqa: E402
from cds_service.devtools.fixtures import ANCHOR  # noqa: E402

HTEST = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HTEST"}
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

# scenario id -> (outcome kind, hours after ANCHOR); negative hours are before the card (must not count),
# hours beyond the report's 14-day horizon must not count either
OUTCOMES: dict[str, list[tuple[str, float]]] = {
    "classic-nms": [("antagonist-stopped", 1), ("specific-treatment", 4), ("icu-transfer", 6), ("nms-coded", 20)],
    "hyperthermia-without-ck": [("icu-transfer", 2), ("nms-coded", 30)],
    "depot-paliperidone": [("specific-treatment", 8), ("nms-coded", 48)],
    "metoclopramide": [("antagonist-stopped", 2)],
    "early-nms": [("antagonist-stopped", 3)],
    "iron-pattern": [("nms-coded", 24 * 20)],  # after the horizon: not counted
    "other-cause-infection": [("nms-coded", -48)],  # before the card: not counted
}


def _when(hours: float) -> str:
    return (ANCHOR + timedelta(hours=hours)).isoformat().replace("+00:00", "Z")


def _drug(scenario: str) -> str:
    """The scenario's dopamine antagonist, as its expected.json names it."""
    expected = json.loads((ROOT / "fhir_fixtures" / "scenarios" / scenario / "expected.json").read_text("utf-8"))
    return str(expected["drugs"][0])


def _resource(scenario: str, kind: str, hours: float, n: int) -> dict[str, Any]:
    subject = {"reference": f"Patient/nms-{scenario}"}
    rid = f"{scenario}-outcome-{n}"
    meta = {"tag": [HTEST]}
    if kind == "nms-coded":
        return {"resourceType": "Condition", "id": rid, "meta": meta, "subject": subject,
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                               "code": "active"}]},
                "code": {"coding": [{"system": SNOMED, "code": "15244003",
                                     "display": "Neuroleptic malignant syndrome"},
                                    {"system": ICD10, "code": "G21.0", "display": "Malignant neuroleptic syndrome"}]},
                "recordedDate": _when(hours)}
    if kind == "specific-treatment":
        return {"resourceType": "MedicationAdministration", "id": rid, "meta": meta, "status": "completed",
                "subject": subject, "effectiveDateTime": _when(hours),
                "medicationCodeableConcept": {"coding": [{"system": ATC, "code": "M03CA01", "display": "dantrolene"}],
                                              "text": "dantrolene 1 mg/kg IV"}}
    if kind == "antagonist-stopped":
        return {"resourceType": "MedicationRequest", "id": rid, "meta": meta, "status": "stopped",
                "intent": "order", "subject": subject, "authoredOn": _when(-24),
                "medicationCodeableConcept": {"text": _drug(scenario)},
                "dispenseRequest": {"validityPeriod": {"start": _when(-24), "end": _when(hours)}}}
    if kind == "icu-transfer":
        return {"resourceType": "Encounter", "id": rid, "meta": meta, "status": "in-progress",
                "class": {"system": ACT, "code": "IMP", "display": "inpatient encounter"},
                "type": [{"coding": [{"system": SNOMED, "code": "309904001",
                                      "display": "Intensive care unit (environment)"}]}],
                "subject": subject, "period": {"start": _when(hours)}}
    raise ValueError(kind)


def build(out_dir: Path) -> None:
    target = out_dir / "outcomes"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for scenario, items in sorted(OUTCOMES.items()):
        bundle = {"resourceType": "Bundle", "type": "collection", "meta": {"tag": [HTEST]},
                  "entry": [{"resource": _resource(scenario, kind, hours, n)}
                            for n, (kind, hours) in enumerate(items, start=1)]}
        (target / f"{scenario}.json").write_text(json.dumps(bundle, indent=2, ensure_ascii=False) + "\n",
                                                 encoding="utf-8")


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
