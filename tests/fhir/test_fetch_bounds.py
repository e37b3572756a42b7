"""The service's own FHIR queries ask for what the rules can use (``cds_service.fhir.bounds``), with ``responses``.

Date bounds from the rules' windows in ``thresholds.toml``, newest first, paging that stops once a page has
gone past the oldest date needed (also when the server ignores the date parameter); the discovery templates
and the prefetch path unchanged.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from flask.testing import FlaskClient

from cds_service.clinical.valuesets import load
from cds_service.fhir import bounds
from cds_service.fhir.client import Deadline, FhirClient, PageStop
from cds_service.fhir.prefetch import substitute
from cds_service.services.templates import prefetch_templates
from tests.conftest import FHIR_BASE, NOW, make_settings
from tests.protocol.test_protocol import URL, febrile_prefetch, hook_request

ANY = re.compile(re.escape(FHIR_BASE) + r"/.*")
NOT_OBS = re.compile(re.escape(FHIR_BASE) + r"/(MedicationRequest|MedicationAdministration|MedicationStatement|"
                     r"Condition|AllergyIntolerance)\b.*")
OBS = f"{FHIR_BASE}/Observation"


def th() -> dict[str, Any]:
    return load().thresholds


def vitals_lookback() -> timedelta:
    t = th()
    return timedelta(hours=t["window"]["acute_hours"] + t["baseline"]["lookback_start_hours"])


def fallback_lookback() -> timedelta:
    t = th()
    return timedelta(hours=t["window"]["acute_hours"]) + timedelta(days=t["baseline"]["fallback_days"])


def instant(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def heart_rate(i: int, when: datetime) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": f"hr{i}", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": instant(when),
            "valueQuantity": {"value": 80, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}


def searchset(resources: list[dict[str, Any]], next_url: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                            "entry": [{"resource": r} for r in resources]}
    if next_url:
        body["link"] = [{"relation": "next", "url": next_url}]
    return body


def query_of(url: str | None) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url or "").query)


# --- the windows and the plans --------------------------------------------------------------------------

def test_windows_come_from_the_thresholds() -> None:
    t = th()
    ex = t["exposure"]
    assert bounds.windows() == {
        "vitals": vitals_lookback(),
        "vitals-fallback": fallback_lookback(),
        "labs": timedelta(days=t["window"]["lab_days"]),
        "exposure": max(timedelta(hours=ex["window_hours"]), timedelta(days=ex["depot_window_days"]),
                        timedelta(days=ex["withdrawal_window_days"]), timedelta(days=ex["recent_start_days"])),
    }


def test_plans_for_the_order_sign_keys() -> None:
    filled = {k: substitute(v, {"patientId": "p1"}) or "" for k, v in prefetch_templates().items()}
    plans = {k: bounds.plan(k, url, NOW) for k, url in filled.items()}
    for key in ("temperature", "vitals"):
        q = query_of(plans[key].url)
        assert q["date"] == ["ge" + instant(NOW - vitals_lookback())]
        assert q["_sort"] == ["-date"]
        assert plans[key].oldest == NOW - vitals_lookback()
        assert plans[key].url.startswith(filled[key].split("&_sort")[0])  # the template's own code list, as is
    assert plans["temperature"].extras == ()
    (earliest,) = plans["vitals"].extras  # the baseline's fallback: the oldest readings within fallback_days
    q = query_of(earliest.url)
    assert q["date"] == ["ge" + instant(NOW - fallback_lookback()), "lt" + instant(NOW - vitals_lookback())]
    assert q["_sort"] == ["date"] and q["_count"] == ["200"] and q["code"] == query_of(plans["vitals"].url)["code"]
    lab_start = NOW - timedelta(days=th()["window"]["lab_days"])
    assert query_of(plans["labs"].url)["date"] == ["ge" + instant(lab_start)]
    (previous_iron,) = plans["labs"].extras
    previous = query_of(previous_iron.url)
    assert previous["date"] == ["lt" + instant(lab_start)]
    assert previous["_count"] == ["1"] and previous["_sort"] == ["-date"]
    iron = set(load().loinc_codes("serum-iron"))
    assert {c.split("|")[1] for c in previous["code"][0].split(",")} == iron
    for key in ("patient", "medications", "conditions", "allergies"):  # no usable R4 date bound: see bounds.py
        assert plans[key].url == filled[key] and plans[key].oldest is None and plans[key].extras == ()
    assert bounds.plan("vitals", filled["vitals"], None).url == filled["vitals"]  # no clock, no bound


def test_rows_by_resource_type_bound_new_keys() -> None:
    plan = bounds.plan("administrations", "MedicationAdministration?patient=p1&_count=100", NOW)
    assert query_of(plan.url)["effective-time"] == ["ge" + instant(NOW - bounds.windows()["exposure"])]
    assert query_of(plan.url)["_sort"] == ["-effective-time"]
    statement = bounds.plan("statements", "MedicationStatement?patient=p1", NOW)
    assert "effective" in query_of(statement.url)
    assert bounds.plan("other", "Encounter?patient=p1", NOW).oldest is None  # no row: unbounded


def test_discovery_templates_carry_no_dates(client: FlaskClient) -> None:
    services = client.get("/cds-services").get_json()["services"]
    for service in services:
        for template in service["prefetch"].values():
            assert "date=" not in template and "authoredon" not in template


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-24T10:00:00Z", datetime(2026, 11, 24, 10, tzinfo=UTC)),
    ("2026-11-24T12:00:00+02:00", datetime(2026, 11, 24, 10, tzinfo=UTC)),
    ("2026-11-24", datetime(2026, 11, 25, tzinfo=UTC) - timedelta(microseconds=1)),
    ("2026-12", datetime(2027, 1, 1, tzinfo=UTC) - timedelta(microseconds=1)),
    ("2026", datetime(2027, 1, 1, tzinfo=UTC) - timedelta(microseconds=1)),
    ("yesterday", None),
])
def test_resource_times_are_the_latest_instant_covered(text: str, expected: datetime | None) -> None:
    assert bounds.parse_latest(text) == expected


def test_passed_needs_newest_first_order() -> None:
    time_of = bounds.plan("vitals", "Observation?patient=p1", NOW).time_of
    oldest = NOW - timedelta(days=1)
    newer, older = heart_rate(1, NOW - timedelta(hours=1)), heart_rate(2, NOW - timedelta(days=2))
    assert bounds.passed([newer, older], oldest, time_of)
    assert not bounds.passed([older, newer], oldest, time_of)  # not sorted: nothing can be concluded
    assert not bounds.passed([newer], oldest, time_of)
    open_ended = {"resourceType": "Observation", "effectivePeriod": {"start": "2020-01-01"}}
    assert time_of(open_ended) is not None and not bounds.passed([open_ended], oldest, time_of)


# --- paging stops at the oldest date needed ---------------------------------------------------------------

def _stop(oldest: datetime) -> PageStop:
    time_of = bounds.plan("vitals", "Observation?patient=p1", NOW).time_of
    return PageStop(oldest, lambda page: bounds.passed(page, oldest, time_of))


@responses.activate
def test_paging_stops_once_a_page_has_passed_the_oldest_date() -> None:
    # a server that ignores the date parameter but sorts newest first: pages reach back 20 days
    oldest = NOW - timedelta(days=5)
    pages = [[heart_rate(10 * p + i, NOW - timedelta(days=p * 4 + i)) for i in range(4)] for p in range(5)]
    for p, page in enumerate(pages):
        nxt = f"{OBS}?page={p + 1}" if p + 1 < len(pages) else None
        responses.add(responses.GET, OBS, json=searchset(page, nxt),
                      match=[responses.matchers.query_param_matcher({"page": str(p)} if p else {"patient": "p1"})])
    client = FhirClient(FHIR_BASE, make_settings(), Deadline(3.0))
    result = client.search("Observation?patient=p1", stop=_stop(oldest))
    assert len(responses.calls) == 2  # page 1 reaches day -5 .. -7: past the bound; pages 3-5 never asked for
    assert result.complete and result.passed_bound and result.note is None
    assert len(result.resources) == 8
    unbounded = FhirClient(FHIR_BASE, make_settings(), Deadline(3.0)).search("Observation?patient=p1")
    assert len(unbounded.resources) == 20 and not unbounded.passed_bound


@responses.activate
def test_unsorted_pages_are_followed_to_the_end() -> None:
    oldest = NOW - timedelta(days=5)
    first = [heart_rate(1, NOW - timedelta(days=9)), heart_rate(2, NOW - timedelta(hours=2))]
    responses.add(responses.GET, OBS, json=searchset(first, f"{OBS}?page=1"),
                  match=[responses.matchers.query_param_matcher({"patient": "p1"})])
    responses.add(responses.GET, OBS, json=searchset([heart_rate(3, NOW - timedelta(hours=1))]),
                  match=[responses.matchers.query_param_matcher({"page": "1"})])
    result = FhirClient(FHIR_BASE, make_settings(), Deadline(3.0)).search("Observation?patient=p1",
                                                                          stop=_stop(oldest))
    assert len(responses.calls) == 2 and not result.passed_bound and len(result.resources) == 3


# --- through the hook -------------------------------------------------------------------------------------

@responses.activate
def test_hook_without_prefetch_sends_bounded_newest_first_queries(client: FlaskClient) -> None:
    prefetch = febrile_prefetch()
    by_code: dict[str, dict[str, Any]] = {}
    for key in ("temperature", "vitals", "labs"):
        by_code[key] = prefetch[key]

    def observations(request: Any) -> tuple[int, dict[str, str], str]:
        import json

        q = query_of(request.url)
        codes = q["code"][0]
        key = "temperature" if "8310-5" in codes else "labs" if "2157-6" in codes or "14798-3" in codes else "vitals"
        own_window = q["date"][0].startswith("ge") and len(q["date"]) == 1
        body = (by_code[key] or searchset([])) if own_window else searchset([])
        return 200, {"Content-Type": "application/fhir+json"}, json.dumps(body)

    responses.add_callback(responses.GET, OBS, callback=observations)
    responses.add(responses.GET, f"{FHIR_BASE}/Patient/p1", json={"resourceType": "Patient", "id": "p1"})
    # the haloperidol in effect before the fever (issue 11: a draft alone never explains findings already there)
    responses.add(responses.GET, f"{FHIR_BASE}/MedicationRequest", json=prefetch["medications"])
    responses.add(responses.GET, NOT_OBS, json=searchset([]))
    response = client.post(URL, json=hook_request(fhirServer=FHIR_BASE, prefetch={}))
    assert response.status_code == 200
    assert response.get_json()["cards"][0]["indicator"] == "critical"
    assert "only partly" not in response.get_json()["cards"][0]["detail"]
    urls = [c.request.url or "" for c in responses.calls]
    observation_urls = [u for u in urls if "/Observation?" in u]
    # temperature, vitals, labs + the vital-sign baseline fallback + the last serum iron before the lab window
    assert len(observation_urls) == 5
    since_vitals = "ge" + instant(NOW - vitals_lookback())
    lab_start = instant(NOW - timedelta(days=th()["window"]["lab_days"]))
    dates = sorted(",".join(query_of(u)["date"]) for u in observation_urls)
    fallback = "ge" + instant(NOW - fallback_lookback()) + ",lt" + instant(NOW - vitals_lookback())
    assert dates == sorted([since_vitals, since_vitals, "ge" + lab_start, "lt" + lab_start, fallback])
    assert sorted(query_of(u)["_sort"][0] for u in observation_urls) == ["-date"] * 4 + ["date"]
    others = [u for u in urls if "/Observation" not in u]
    assert others and all("date" not in query_of(u) for u in others)  # meds, conditions, allergies: unbounded


@responses.activate
def test_previous_iron_from_a_server_ignoring_the_date_is_not_taken_for_an_earlier_one() -> None:
    from cds_service.fhir.client import QueryPool
    from cds_service.fhir.prefetch import resolve

    iron_now = heart_rate(1, NOW - timedelta(hours=3)) | {
        "id": "fe1", "code": {"coding": [{"system": "http://loinc.org", "code": "14798-3"}]}}
    iron_old = iron_now | {"id": "fe0", "effectiveDateTime": instant(NOW - timedelta(days=20))}

    def labs(request: Any) -> tuple[int, dict[str, str], str]:
        import json

        return 200, {}, json.dumps(searchset([iron_now]))

    responses.add_callback(responses.GET, OBS, callback=labs)
    pool = QueryPool(4)
    try:
        client = FhirClient(FHIR_BASE, make_settings(), Deadline(3.0))
        templates = {"labs": prefetch_templates()["labs"]}
        data = resolve(templates, {}, {"patientId": "p1"}, client, pool, budget_remaining=lambda: 3.0, now=NOW)
        assert [r["id"] for r in data["labs"].resources] == ["fe1"] and data["labs"].ok
        responses.reset()
        responses.add(responses.GET, OBS, json=searchset([iron_old]))
        client = FhirClient(FHIR_BASE, make_settings(), Deadline(3.0))
        data = resolve(templates, {}, {"patientId": "p1"}, client, pool, budget_remaining=lambda: 3.0, now=NOW)
        assert [r["id"] for r in data["labs"].resources] == ["fe0"]  # same resource from both queries: once
    finally:
        pool.shutdown()


@responses.activate
def test_prefetch_is_used_as_it_came(client: FlaskClient) -> None:
    prefetch = febrile_prefetch()
    responses.add(responses.GET, ANY, json=searchset([]))
    response = client.post(URL, json=hook_request(fhirServer=FHIR_BASE, prefetch=prefetch))
    assert response.status_code == 200
    assert response.get_json()["cards"][0]["indicator"] == "critical"
    assert len(responses.calls) == 0


@responses.activate
def test_a_failed_before_window_query_leaves_the_key_usable_but_partial() -> None:
    from cds_service.fhir.client import QueryPool
    from cds_service.fhir.prefetch import resolve

    ck = heart_rate(1, NOW - timedelta(hours=3)) | {
        "id": "ck1", "code": {"coding": [{"system": "http://loinc.org", "code": "2157-6"}]}}

    def labs(request: Any) -> tuple[int, dict[str, str], str]:
        import json

        if query_of(request.url).get("_count") == ["1"]:  # the previous serum iron
            return 503, {}, json.dumps({"resourceType": "OperationOutcome",
                                        "issue": [{"severity": "error", "code": "transient"}]})
        return 200, {}, json.dumps(searchset([ck]))

    responses.add_callback(responses.GET, OBS, callback=labs)
    pool = QueryPool(4)
    try:
        client = FhirClient(FHIR_BASE, make_settings(), Deadline(3.0))
        data = resolve({"labs": prefetch_templates()["labs"]}, {}, {"patientId": "p1"}, client, pool,
                       budget_remaining=lambda: 3.0, now=NOW)["labs"]
    finally:
        pool.shutdown()
    assert data.ok and not data.complete and [r["id"] for r in data.resources] == ["ck1"]
    assert data.note is not None and "readings before the window" in data.note and "503" in data.note
