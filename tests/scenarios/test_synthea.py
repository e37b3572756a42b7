"""Real Synthea R4 patients with a draft antipsychotic order: nothing crashes, and no warning or critical card:
none of them was ever given a dopamine antagonist, and a draft never explains a fever already there (issue 11;
before, the five febrile COVID-19 patients got a warning each).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cds_service.app import create_app
from cds_service.clinical.valuesets import RXNORM
from cds_service.devtools import fixtures
from cds_service.services.templates import prefetch_templates
from tests.conftest import DATASETS, make_settings
from tests.helpers.cdshooks_check import response_problems

# The five COVID-19 patients with repeated fever (datasets/README.md): fever x2 + a draft antipsychotic used to
# give a warning; the draft is their only exposure and comes after the fever, so now no card.
FEBRILE_COVID = {"1017080", "1479192", "840599", "872791", "921317"}
BUNDLES = sorted((DATASETS / "synthea-r4").glob("*/*.json"))
EXPECTED_BUNDLES = 25  # datasets/MANIFEST.tsv: 20 healthwallet + 2 Wasee11 + 3 generated-sample-data


def test_all_synthea_bundles_present() -> None:
    """A missing data folder must fail, not collapse the parametrised test below to nothing."""
    assert len(BUNDLES) == EXPECTED_BUNDLES, f"datasets/synthea-r4 holds {len(BUNDLES)} bundles"


def _patient_resources(path: Path) -> tuple[str, list[dict[str, Any]]]:
    bundle = json.loads(path.read_text(encoding="utf-8"))
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    text = json.dumps([e["resource"] for e in bundle["entry"]])
    # Synthea transaction bundles reference by urn:uuid; a server would resolve them to Type/id.
    text = text.replace(f"urn:uuid:{patient['id']}", f"Patient/{patient['id']}")
    return patient["id"], json.loads(text)


def _clock(resources: list[dict[str, Any]]) -> datetime:
    """One hour after the patient's last febrile reading (else after the last observation)."""
    observations = [r for r in resources if r.get("resourceType") == "Observation" and r.get("effectiveDateTime")]
    febrile = [r for r in observations if any(c.get("code") in ("8310-5", "8331-1") for c in r["code"]["coding"])
               and r.get("valueQuantity", {}).get("value", 0) > 38.0]
    latest = max(r["effectiveDateTime"] for r in (febrile or observations))
    return datetime.fromisoformat(latest.replace("Z", "+00:00")).astimezone(UTC) + timedelta(hours=1)


@pytest.mark.parametrize("path", BUNDLES, ids=[p.stem[:24] for p in BUNDLES])
def test_synthea_patient_with_draft_haloperidol(path: Path) -> None:
    patient_id, resources = _patient_resources(path)
    now = _clock(resources)  # so that the patient's last febrile episode, if any, falls in the window
    app = create_app(make_settings(fixed_now=now))
    draft = {"resourceType": "MedicationRequest", "id": "draft-haloperidol", "status": "draft", "intent": "order",
             "subject": {"reference": f"Patient/{patient_id}"},
             "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "5093", "display": "haloperidol"}]}}
    request = {
        "hook": "order-sign", "hookInstance": f"synthea-{patient_id}",
        "context": {"userId": "Practitioner/x", "patientId": patient_id,
                    "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": draft}]}},
        "prefetch": fixtures.fill_prefetch(resources, prefetch_templates(), patient_id),
    }
    response = app.test_client().post("/cds-services/nms-order-sign", json=request)
    assert response.status_code == 200
    body = response.get_json()
    assert response_problems(body) == []
    indicators = [c["indicator"] for c in body["cards"]]
    assert "critical" not in indicators and "warning" not in indicators, body["cards"][0]["summary"]
    if path.stem.split("-")[0] in FEBRILE_COVID:
        assert indicators == []
    app.extensions["nms_cds"].close()
