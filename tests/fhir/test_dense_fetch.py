"""A dense window read concurrently: offset pages of a kept result set, time slices, the page cap, the token.

Unit level with ``responses`` (cds_service/fhir/prefetch.py, cds_service/fhir/bounds.py); the ICU record on
the local FHIR server with page latency is in tests/scenarios/test_long_stay_fetch.py.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any
from urllib.parse import parse_qs, urlsplit

import responses

from cds_service.fhir import bounds
from cds_service.fhir.client import Deadline, FhirClient, QueryPool
from cds_service.fhir.prefetch import resolve
from cds_service.services.templates import prefetch_templates
from tests.conftest import FHIR_BASE, make_settings

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
TOKEN = "tok-dense-1"


def temp(i: int, when: datetime) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": f"t{i}", "status": "final",
            "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
            "effectiveDateTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "valueQuantity": {"value": 37.0, "code": "Cel", "system": "http://unitsofmeasure.org"}}


# 960 temperatures, one every 15 minutes, newest first: the 10-day vitals window of an ICU record
TEMPS = [temp(i, NOW - timedelta(minutes=15 * i + 5)) for i in range(960)]


def page(resources: list[dict[str, Any]], total: int | None, next_url: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                            "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources]}
    if total is not None:
        body["total"] = total
    if next_url:
        body["link"] = [{"relation": "next", "url": next_url}]
    return body


def _resolve(max_pages: int = 10) -> dict[str, Any]:
    settings = make_settings(fhir_max_pages=max_pages)
    client = FhirClient(FHIR_BASE, settings, Deadline(5.0), token=TOKEN)
    pool = QueryPool(8)
    try:
        return resolve({"temperature": prefetch_templates()["temperature"]}, {}, {"patientId": "p1"}, client, pool,
                       budget_remaining=client.deadline.remaining, now=NOW)
    finally:
        pool.shutdown()


def _hapi(count: int = 100, total: bool = True) -> None:
    """A HAPI-like server: the search answers the first ``count`` and a ``_getpages`` link; later pages by offset."""
    def search(request: Any) -> tuple[int, dict[str, str], str]:
        import json
        query = parse_qs(urlsplit(request.url).query)
        if "_getpages" in query:
            offset, size = int(query["_getpagesoffset"][0]), int(query["_count"][0])
            found = TEMPS[offset:offset + size]
            link = (f"{FHIR_BASE}?_getpages=s1&_getpagesoffset={offset + size}&_count={size}"
                    if offset + size < len(TEMPS) else None)
            return 200, {}, json.dumps(page(found, len(TEMPS) if total else None, link))
        return 200, {}, json.dumps(page(TEMPS[:count], len(TEMPS) if total else None,
                                        f"{FHIR_BASE}?_getpages=s1&_getpagesoffset={count}&_count={count}"))

    responses.add_callback(responses.GET, re.compile(re.escape(FHIR_BASE) + r".*"), callback=search)


@responses.activate
def test_later_pages_of_a_kept_result_set_are_read_at_once_with_the_token() -> None:
    _hapi()
    data = _resolve(max_pages=10)["temperature"]
    urls = [c.request.url or "" for c in responses.calls]
    assert all(c.request.headers.get("Authorization") == f"Bearer {TOKEN}" for c in responses.calls)
    offsets = sorted(int(parse_qs(urlsplit(u).query)["_getpagesoffset"][0]) for u in urls if "_getpages" in u)
    assert offsets == [100 * i for i in range(1, 10)]  # built from the first page's link and total, once each
    assert len(urls) == 10  # first page + 9 = fhir_max_pages
    assert [r["id"] for r in data.resources] == [f"t{i}" for i in range(960)]  # all, newest first, once each
    assert data.complete and data.note is None


@responses.activate
def test_the_page_cap_names_the_oldest_readings_left_out() -> None:
    _hapi()
    data = _resolve(max_pages=4)["temperature"]
    assert len(responses.calls) == 4
    assert [r["id"] for r in data.resources] == [f"t{i}" for i in range(400)]  # the newest 400, in order
    assert not data.complete and data.note == "the oldest 560 of 960 readings not read: page cap (fhir_max_pages)"


@responses.activate
def test_without_a_total_the_window_is_cut_into_time_slices() -> None:
    _hapi(total=False)  # an opaque-looking server: no total, so the offsets cannot be planned
    data = _resolve(max_pages=20)["temperature"]
    searches = [c.request for c in responses.calls if "_getpages" not in (c.request.url or "")]
    assert all(r.headers.get("Authorization") == f"Bearer {TOKEN}" for r in searches)
    sliced = [parse_qs(urlsplit(r.url or "").query)["date"] for r in searches[1:]]
    assert sliced and all(len(d) == 2 and d[0].startswith("ge") and d[1][:2] in ("lt", "le") for d in sliced)
    assert len({r["id"] for r in data.resources}) == len(data.resources)  # slices overlap nothing twice


def test_slices_cover_the_rest_of_the_window_newest_first_without_gaps() -> None:
    url = prefetch_templates()["temperature"].replace("{{context.patientId}}", "p1")
    plan = bounds.plan("temperature", url, NOW)
    parts, oldest = bounds.slices(plan, TEMPS[:100], 960, 9)
    assert oldest is None and len(parts) == 6  # 860 left, 200 a slice with a 25 % margin
    assert parts[0].high == datetime.fromisoformat(TEMPS[99]["effectiveDateTime"])
    assert "date=le" in parts[0].url and all("date=lt" in p.url for p in parts[1:])
    for newer, older in pairwise(parts):
        assert older.high == newer.low  # contiguous, no overlap
    assert parts[-1].low == plan.oldest
    capped, oldest = bounds.slices(plan, TEMPS[:100], 960, 3)
    assert len(capped) == 3 and oldest == capped[-1].low and oldest is not None and oldest > plan.oldest
    # a page that shows the server ignored the date bound or the sort allows no slices
    assert bounds.slices(plan, list(reversed(TEMPS[:100])), 960, 9) == ([], None)
    assert bounds.slices(plan, [temp(1, NOW - timedelta(days=30))], 960, 9) == ([], None)


@responses.activate
def test_a_later_page_that_fails_keeps_what_was_read_and_says_so() -> None:
    responses.add(responses.GET, f"{FHIR_BASE}/Observation?cursor=abc", status=503)
    responses.add(responses.GET, re.compile(re.escape(FHIR_BASE) + r"/Observation.*"),
                  json=page(TEMPS[:100], None, f"{FHIR_BASE}/Observation?cursor=abc"))
    client = FhirClient(FHIR_BASE, make_settings(), Deadline(3.0), token=TOKEN)
    result = client.search("Observation?patient=p1")
    assert len(result.resources) == 100 and not result.complete
    assert result.note == "page 2 could not be read: FHIR server answered 503 on GET /r4/Observation"
