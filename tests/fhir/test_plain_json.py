"""The plain-JSON fast path on its own: what it accepts, what it sends to the R4B path (None), and the records
it gives. (tests/scenarios/test_bench_scenarios.py checks it against the R4B path on whole records and their
mutations.)"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from cds_service.clinical.model import Coding, ObservationInput
from cds_service.fhir import plain_types as t
from cds_service.fhir.plain_json import plain_medication_request, plain_observation

LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
WANTED = frozenset({"8310-5", "2157-6", "8480-6", "8462-4"})


def temperature(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "resourceType": "Observation", "id": "t1", "status": "final",
        "meta": {"versionId": "2", "lastUpdated": "2026-01-02T03:04:05.123Z"},
        "code": {"coding": [{"system": LOINC, "code": "8310-5", "display": "Body temperature"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-01-02T03:00:00+01:00",
        "valueQuantity": {"value": 39.4, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"},
    }
    raw.update(changes)
    return raw


def order(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order",
        "subject": {"reference": "Patient/p1"}, "authoredOn": "2026-01-01",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "5093", "display": "haloperidol"}],
                                      "text": "Haloperidol"},
        "dosageInstruction": [{"route": {"coding": [{"code": "47625008"}], "text": "IV"},
                               "doseAndRate": [{"doseQuantity": {"value": 5, "unit": "mg"}}]}],
    }
    raw.update(changes)
    return raw


# --- the datatype checks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("check", "good", "bad"), [
    (t.ok_code, ["final", "a b", "x-1"], ["", " final", "final ", "a  b", 1, None, "ü"]),
    (t.ok_id, ["abc-1.2", "A" * 255], ["", "a_b", "A" * 256, 7, None]),
    (t.ok_boolean, [True, False], [0, 1, "true", None]),
    (t.ok_datetime, ["2026-01-02", "2026-01-02T03:04:05Z", "2026-01-02T03:04:05.123456+05:30"],
     ["2026-01", "2026", "2026-01-02T03:04Z", "2026-01-02T03:04:60Z", "2026-01-02T03:04:05", "2026-02-30", None]),
    (t.ok_quantity, [{"value": 1.5, "unit": "mg"}, {"value": 3}, {"code": "mg"}],
     [{"value": True}, {"value": "1"}, {"value": float("nan")}, {}, {"value": 1, "comparator": "<"}, []]),
    (t.ok_concept, [{"text": "x"}, {"coding": [{"system": LOINC, "code": "8310-5"}]}],
     [{}, {"coding": []}, {"coding": [{}]}, {"text": ""}, {"text": None}, {"coding": [{"code": 1}]}]),
    (t.ok_reference, [{"reference": "Patient/p1"}, {"display": "x"}], [{}, {"reference": ""}, {"extension": []}]),
])
def test_each_datatype_check_accepts_only_the_plainly_valid(check: t.Check, good: list[Any], bad: list[Any]) -> None:
    for value in good:
        assert check(value), value
    for value in bad:
        assert not check(value), value


def test_date_times_are_read_as_aware_utc_and_partial_dates_are_not_plain() -> None:
    assert t.plain_datetime("2026-01-02T03:00:00+01:00") == datetime(2026, 1, 2, 2, tzinfo=UTC)
    assert t.plain_datetime("2026-01-02") == datetime(2026, 1, 2, tzinfo=UTC)
    assert t.plain_datetime("2026-01") is None
    assert t.plain_instant("2026-01-02") is None  # an instant needs the time and the zone
    assert t.plain_instant("2026-01-02T03:04:05Z") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_codes_with_stray_whitespace_are_tidied_like_the_model_repairs_them() -> None:
    assert t.tidied_code(" final ") == "final"
    assert t.tidied_code("") is None and t.tidied_code(3) is None


# --- Observations -----------------------------------------------------------------------------------------


def test_a_plain_observation_is_flattened_to_one_record() -> None:
    [record] = plain_observation(temperature(), WANTED) or []
    assert record == ObservationInput("Observation/t1", "final", ("8310-5",), 39.4, "Cel",
                                      datetime(2026, 1, 2, 2, tzinfo=UTC))


def test_a_blood_pressure_panel_gives_one_record_per_wanted_component() -> None:
    panel = temperature(code={"coding": [{"system": LOINC, "code": "85354-9"}]}, component=[
        {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]}, "valueQuantity": {"value": 150, "code": "mm[Hg]"}},
        {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, "valueQuantity": {"value": 95, "code": "mm[Hg]"}},
        {"code": {"coding": [{"system": LOINC, "code": "9999-9"}]}, "valueQuantity": {"value": 1}},
    ])
    del panel["valueQuantity"]
    records = plain_observation(panel, WANTED)
    assert records is not None
    assert [(r.codes, r.value, r.unit) for r in records] == [(("8480-6",), 150.0, "mm[Hg]"),
                                                              (("8462-4",), 95.0, "mm[Hg]")]


def test_the_reference_range_gives_the_bounds_and_the_unit() -> None:
    ck = temperature(code={"coding": [{"system": LOINC, "code": "2157-6"}]},
                     valueQuantity={"value": 4000, "unit": "U/L"},
                     referenceRange=[{"low": {"value": 20, "unit": "U/L"}, "high": {"value": 200, "unit": "U/L"}}])
    [record] = plain_observation(ck, WANTED) or []
    assert (record.ref_low, record.ref_high, record.ref_unit) == (20.0, 200.0, "U/L")


@pytest.mark.parametrize("change", [
    {"extension": [{"url": "http://example.org/x", "valueString": "y"}]},  # an element the path does not know
    {"valueQuantity": None},  # null is never plain
    {"effectiveDateTime": "2026-01"},  # a partial date
    {"effectiveDateTime": "2026-01-02T03:04:60Z"},  # a leap second
    {"id": "bad_id"},
    {"status": ""},
    {"code": {"coding": []}},
    {"subject": {"reference": ""}},
    {"valueQuantity": {"value": "39.4", "unit": "Cel"}},
    {"resourceType": "Condition"},
])
def test_anything_not_plainly_valid_takes_the_r4b_path(change: dict[str, Any]) -> None:
    assert plain_observation(temperature(**change), WANTED) is None


def test_required_elements_are_required() -> None:
    for name in ("status", "code"):
        raw = temperature()
        del raw[name]
        assert plain_observation(raw, WANTED) is None, name


def test_the_memo_does_not_change_the_answer() -> None:
    memo = t.Memo()
    first = plain_observation(temperature(), WANTED, memo)
    again = plain_observation(copy.deepcopy(temperature()), WANTED, memo)
    assert first == again == plain_observation(temperature(), WANTED)
    assert plain_observation(temperature(subject={"reference": ""}), WANTED, memo) is None  # not hidden by the memo


# --- MedicationRequests -----------------------------------------------------------------------------------


def test_a_plain_order_is_flattened() -> None:
    med = plain_medication_request(order(), is_draft=True)
    assert med is not None
    assert med.ref == "MedicationRequest/m1" and med.is_draft and med.status == "active"
    assert med.codings == (Coding(RXNORM, "5093", "haloperidol"),)
    assert med.names == ("Haloperidol", "haloperidol")
    assert med.route == (Coding(None, "47625008", None),) and med.route_text == "IV"
    assert (med.dose_value, med.dose_unit) == (5.0, "mg")
    assert med.authored == datetime(2026, 1, 1, tzinfo=UTC) and med.do_not_perform is False


def test_a_status_with_stray_whitespace_is_tidied() -> None:
    med = plain_medication_request(order(status=" active "), is_draft=False)
    assert med is not None and med.status == "active"


@pytest.mark.parametrize("change", [
    {"medicationReference": {"reference": "Medication/x"}},  # a reference: the R4B path looks it up
    {"authoredOn": "2026-01"},
    {"doNotPerform": "yes"},
    {"note": [{"text": "x"}]},
    {"intent": None},
])
def test_an_order_not_plainly_valid_takes_the_r4b_path(change: dict[str, Any]) -> None:
    assert plain_medication_request(order(**change), is_draft=False) is None


def test_an_order_without_a_required_element_is_not_plain() -> None:
    for name in ("status", "intent", "subject", "medicationCodeableConcept"):
        raw = order()
        del raw[name]
        assert plain_medication_request(raw, is_draft=False) is None, name
