"""Issue 14: no quadratic path, and hard caps with a documented degraded answer or a clear 4xx.

Each capped input is sent through the service with a generous time bound (speed itself is measured by
``make bench``): 32,000 systolic readings within 24 h, 80,000 draft orders, one prefetch key with more than
``resources_per_key`` resources, and the O(n) blood-pressure swing against the quadratic definition.
"""

from __future__ import annotations

import copy
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from cds_service.clinical import ClinicalInput, assess
from cds_service.clinical.model import Coding, MedicationInput, ObservationInput, Reading
from cds_service.clinical.rules import _max_swing
from cds_service.clinical.valuesets import RXNORM, load
from cds_service.config import Settings
from cds_service.config_report import load_settings
from cds_service.devtools import fixtures
from cds_service.errors import BadRequest
from cds_service.fhir.prefetch import KeyData
from cds_service.fhir.scope import restrict
from tests.conftest import make_settings
from tests.helpers.outcome import issue

URL = "/cds-services/nms-order-sign"
LIMITS = load().thresholds["limits"]  # the core's own cap
SETTINGS_LIMITS = {name: Settings.model_fields[name].default for name in (
    "resources_per_key", "draft_orders_per_request")}  # the data-access limits, defaults of the settings
TIME_BOUND = 30.0  # seconds; generous for a 2-core machine shared by several test runs


@pytest.fixture
def settings() -> Settings:
    return make_settings(fixed_now=fixtures.ANCHOR, max_body_bytes=64 * 1024 * 1024)


def _systolic_flood(n: int, patient: str) -> dict[str, Any]:
    start = fixtures.ANCHOR - timedelta(hours=24)
    entries = []
    for i in range(n):
        when = (start + timedelta(seconds=i * 24 * 3600 / n)).strftime("%Y-%m-%dT%H:%M:%SZ")
        entries.append({"resource": {
            "resourceType": "Observation", "id": f"sbp{i}", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "subject": {"reference": f"Patient/{patient}"}, "effectiveDateTime": when,
            "valueQuantity": {"value": 100 + (i * 37) % 80, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org",
                              "code": "mm[Hg]"}}})
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries}


def test_32000_systolic_readings_in_24h_answer_in_time_and_say_what_was_capped(client: FlaskClient) -> None:
    request = copy.deepcopy(fixtures.load_scenario("classic-nms").request)
    request["prefetch"]["vitals"] = _systolic_flood(32_000, request["context"]["patientId"])
    started = time.perf_counter()
    response = client.post(URL, json=request)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200
    assert elapsed < TIME_BOUND
    (card,) = response.get_json()["cards"]
    assert "capped at the service's limits" in card["detail"]
    assert f"beyond the limit of {SETTINGS_LIMITS['resources_per_key']:,}" in card["detail"]
    assert "vital signs (only partly" in card["detail"]


def test_80000_draft_orders_are_refused_with_400(client: FlaskClient) -> None:
    request = copy.deepcopy(fixtures.load_scenario("classic-nms").request)
    draft = {"resourceType": "MedicationRequest", "status": "draft", "intent": "order",
             "subject": {"reference": f"Patient/{request['context']['patientId']}"},
             "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "5093"}]}}
    request["context"]["draftOrders"]["entry"] = [{"resource": {**draft, "id": f"d{i}"}} for i in range(80_000)]
    started = time.perf_counter()
    response = client.post(URL, json=request)
    assert time.perf_counter() - started < TIME_BOUND
    assert response.status_code == 400
    body = response.get_json()
    assert issue(body)["field"] == "context.draftOrders"
    assert f"at most {SETTINGS_LIMITS['draft_orders_per_request']:,}" in issue(body)["diagnostics"]


def test_drafts_at_the_limit_are_assessed(client: FlaskClient) -> None:
    request = copy.deepcopy(fixtures.load_scenario("classic-nms").request)
    draft = request["context"]["draftOrders"]["entry"][0]["resource"]
    n = SETTINGS_LIMITS["draft_orders_per_request"]
    request["context"]["draftOrders"]["entry"] = [{"resource": {**draft, "id": f"d{i}"}} for i in range(n)]
    response = client.post(URL, json=request)
    assert response.status_code == 200
    assert response.get_json()["cards"][0]["indicator"] == "critical"


def test_readings_per_concept_are_capped_in_the_core() -> None:
    now = datetime(2026, 11, 24, 12, tzinfo=UTC)
    cap = LIMITS["readings_per_concept"]
    observations = tuple(ObservationInput(None, "final", ("8480-6",), 120 + i % 30, "mm[Hg]",
                                          now - timedelta(seconds=i)) for i in range(cap + 1000))
    drafts = tuple(MedicationInput(f"MedicationRequest/d{i}", True, "draft", (Coding(RXNORM, "5093"),))
                   for i in range(5000))
    started = time.perf_counter()
    a = assess(ClinicalInput(now=now, observations=observations, medications=drafts))
    assert time.perf_counter() - started < TIME_BOUND
    assert a.quality.capped == {"systolic-bp": 1000}
    assert len(a.readings["systolic-bp"]) == cap
    assert any("1,000 older systolic-bp readings" in c for c in a.capped)


def _quadratic(series: list[Reading], span: timedelta) -> float | None:
    best = None
    for i, first in enumerate(series):
        for second in series[i + 1:]:
            if second.time - first.time > span:
                break
            delta = abs(second.value - first.value)
            best = delta if best is None or delta > best else best
    return best


@hyp_settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 48 * 60), st.integers(60, 220)), max_size=60))
def test_linear_swing_equals_the_quadratic_definition(points: list[tuple[int, int]]) -> None:
    t0 = datetime(2026, 11, 24, tzinfo=UTC)
    series = sorted((Reading("systolic-bp", float(v), "mm[Hg]", t0 + timedelta(minutes=m), "8480-6")
                     for m, v in points), key=lambda r: r.time)
    span = timedelta(hours=24)
    got = _max_swing(series, span)
    assert (got[0] if got else None) == _quadratic(series, span)


def test_ten_thousand_unrelated_orders_and_doses_answer_in_time(client: FlaskClient) -> None:
    request = copy.deepcopy(fixtures.load_scenario("classic-nms").request)
    subject = {"reference": f"Patient/{request['context']['patientId']}"}
    n = 10_000
    request["prefetch"]["medications"]["entry"] += [{"resource": {
        "resourceType": "MedicationRequest", "id": f"m{i}", "status": "active", "intent": "order", "subject": subject,
        "medicationCodeableConcept": {"text": f"unrelated medication {i} 50 mg tablet"}, "authoredOn": "2026-11-20"}}
        for i in range(n)]
    given = {"effectiveDateTime": "2026-11-22T10:00:00Z"}
    for key, kind, when in (("administrations", "MedicationAdministration", given),
                            ("statements", "MedicationStatement", {"effectivePeriod": {"start": "2026-10-01"}})):
        request["prefetch"][key] = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {
            "resourceType": kind, "id": f"{key}{i}", "status": "completed", "subject": subject,
            "medicationCodeableConcept": {"text": f"another unrelated drug {i}"}, **when}} for i in range(n)]}
    started = time.perf_counter()
    response = client.post(URL, json=request)
    assert time.perf_counter() - started < TIME_BOUND
    assert response.status_code == 200
    assert response.get_json()["cards"][0]["indicator"] == "critical"


def test_the_data_access_limits_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NMS_CDS_RESOURCES_PER_KEY", "3")
    monkeypatch.setenv("NMS_CDS_DRAFT_ORDERS_PER_REQUEST", "2")
    settings = load_settings()
    assert (settings.resources_per_key, settings.draft_orders_per_request) == (3, 2)
    assert SETTINGS_LIMITS == {"resources_per_key": 10000, "draft_orders_per_request": 200}  # the defaults
    own = [{"resourceType": "Observation", "id": f"o{i}", "subject": {"reference": "Patient/p1"}} for i in range(5)]
    data = {"vitals": KeyData("vitals", own)}
    _, scope = restrict(data, [], "p1", None, settings)
    assert [r["id"] for r in data["vitals"].resources] == ["o0", "o1", "o2"] and not data["vitals"].complete
    assert scope.capped == ["vitals: 2 resources beyond the limit of 3"]
    draft = {"resourceType": "MedicationRequest", "status": "draft", "intent": "order"}
    with pytest.raises(BadRequest, match="draftOrders holds 3 resources; at most 2 are accepted"):
        restrict({}, [draft] * 3, "p1", None, settings)
