"""Integration tests for the local Node FHIR server (fhir_server/) through cds_service.devtools.localfhir."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from cds_service.devtools.localfhir import (
    FAULT_MODES,
    LocalFhirError,
    LocalFhirServer,
)
from tests.conftest import require_local_fhir

pytestmark = pytest.mark.integration

require_local_fhir()

LOINC_TEMP = "http://loinc.org|8310-5"
N_OBS = 120
TIMEOUT = 10.0
HUGE_CAP = 64 * 1024 * 1024


def _observation(i: int) -> dict[str, Any]:
    # Distinct instants, deliberately not in insertion order, some with a non-UTC offset.
    day = 1 + (i * 37) % 28
    hour = (i * 7) % 24
    offset = "+02:00" if i % 5 == 0 else "Z"
    return {
        "fullUrl": f"urn:uuid:00000000-0000-4000-8001-{i:012d}",
        "resource": {
            "resourceType": "Observation",
            "id": f"temp-{i:03d}",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5", "display": "Body temperature"}]},
            "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000001"},
            "effectiveDateTime": f"2024-{1 + i % 3:02d}-{day:02d}T{hour:02d}:{i % 60:02d}:00{offset}",
            "valueQuantity": {"value": 36.5 + (i % 30) / 10, "unit": "Cel", "system": "http://unitsofmeasure.org"},
        },
        "request": {"method": "PUT", "url": f"Observation/temp-{i:03d}"},
    }


def _bundle() -> dict[str, Any]:
    patient = {
        "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001",
        "resource": {"resourceType": "Patient", "id": "p1", "name": [{"family": "Localfhir", "given": ["Test"]}]},
        "request": {"method": "PUT", "url": "Patient/p1"},
    }
    heart_rate = {
        "fullUrl": "urn:uuid:00000000-0000-4000-8002-000000000001",
        "resource": {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000001"},
            "effectiveDateTime": "2024-02-01T10:00:00Z",
        },
        "request": {"method": "POST", "url": "Observation"},
    }
    entries = [patient, heart_rate, *(_observation(i) for i in range(N_OBS))]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


@pytest.fixture(scope="module")
def fhir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFhirServer]:
    root = tmp_path_factory.mktemp("localfhir")
    (root / "case-a").mkdir()
    (root / "case-a" / "bundle.json").write_text(json.dumps(_bundle()), encoding="utf-8")
    (root / "notes.json").write_text('{"resourceType": "Patient", "id": "ignored"}', encoding="utf-8")
    with LocalFhirServer(load=[root], page_size=50) as server:
        yield server


def _get(url: str, **params: str) -> requests.Response:
    return requests.get(url, params=params, timeout=TIMEOUT)


def _instant(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- healthy behaviour -----------------------------------------------------------------------------


def test_start_reports_base_url_and_metadata(fhir: LocalFhirServer) -> None:
    assert fhir.base_url.startswith("http://127.0.0.1:")
    assert fhir.base_url.endswith("/fhir")
    resp = _get(f"{fhir.base_url}/metadata")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/fhir+json")
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    cap = resp.json()
    assert cap["resourceType"] == "CapabilityStatement"
    assert cap["fhirVersion"] == "4.0.1"
    assert "skipping" in fhir.stderr_tail()  # notes.json is not a transaction Bundle


def test_read(fhir: LocalFhirServer) -> None:
    resp = _get(f"{fhir.base_url}/Patient/p1")
    assert resp.status_code == 200
    assert resp.json()["resourceType"] == "Patient"
    assert resp.json()["id"] == "p1"
    missing = _get(f"{fhir.base_url}/Patient/nope")
    assert missing.status_code == 404
    assert missing.json()["resourceType"] == "OperationOutcome"
    assert _get(f"{fhir.base_url}/NotAType/1").status_code == 404


def test_search_by_code(fhir: LocalFhirServer) -> None:
    bundle = _get(f"{fhir.base_url}/Observation", patient="p1", code=LOINC_TEMP, _count="200").json()
    assert bundle["type"] == "searchset"
    assert bundle["total"] == N_OBS
    assert len(bundle["entry"]) == N_OBS
    codes = {e["resource"]["code"]["coding"][0]["code"] for e in bundle["entry"]}
    assert codes == {"8310-5"}
    either = _get(f"{fhir.base_url}/Observation", code=f"{LOINC_TEMP},http://loinc.org|8867-4", _count="0")
    assert either.json()["total"] == N_OBS + 1
    assert _get(f"{fhir.base_url}/Observation", code="http://loinc.org|0000-0").json()["total"] == 0


def test_sort_descending_date(fhir: LocalFhirServer) -> None:
    bundle = _get(f"{fhir.base_url}/Observation", code=LOINC_TEMP, _sort="-date", _count="200").json()
    instants = [_instant(e["resource"]["effectiveDateTime"]) for e in bundle["entry"]]
    assert len(instants) == N_OBS
    assert instants == sorted(instants, reverse=True)


def test_next_paging_yields_all_exactly_once(fhir: LocalFhirServer) -> None:
    url: str | None = f"{fhir.base_url}/Observation?code={LOINC_TEMP}&patient=p1&_sort=-date&_count=50"
    pages: list[list[str]] = []
    instants: list[float] = []
    while url is not None and len(pages) < 10:
        bundle = requests.get(url, timeout=TIMEOUT).json()
        assert bundle["total"] == N_OBS
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        assert links["self"].startswith(fhir.base_url)
        pages.append([e["resource"]["id"] for e in bundle["entry"]])
        instants += [_instant(e["resource"]["effectiveDateTime"]) for e in bundle["entry"]]
        url = links.get("next")
    assert [len(p) for p in pages] == [50, 50, 20]
    ids = [i for page in pages for i in page]
    assert len(set(ids)) == N_OBS == len(ids)
    assert instants == sorted(instants, reverse=True)  # global order holds across page boundaries


def test_post_search_form_encoded(fhir: LocalFhirServer) -> None:
    resp = requests.post(
        f"{fhir.base_url}/Observation/_search?_count=5",
        data={"code": LOINC_TEMP, "patient": "p1", "_sort": "-date"},
        headers={"Accept": "application/json+fhir"},
        timeout=TIMEOUT,
    )
    assert resp.status_code == 200
    bundle = resp.json()
    assert bundle["total"] == N_OBS
    assert len(bundle["entry"]) == 5
    links = {link["relation"]: link["url"] for link in bundle["link"]}
    assert "_offset=5" in links["next"]
    top = _get(f"{fhir.base_url}/Observation", code=LOINC_TEMP, _sort="-date", _count="5").json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == [e["resource"]["id"] for e in top["entry"]]


def test_put_creates_then_updates(fhir: LocalFhirServer) -> None:
    body = {"resourceType": "Patient", "id": "put-1", "gender": "female"}
    headers = {"Content-Type": "application/fhir+json"}
    first = requests.put(f"{fhir.base_url}/Patient/put-1", json=body, headers=headers, timeout=TIMEOUT)
    second = requests.put(f"{fhir.base_url}/Patient/put-1", json=body, headers=headers, timeout=TIMEOUT)
    assert (first.status_code, second.status_code) == (201, 200)
    assert _get(f"{fhir.base_url}/Patient", _id="put-1").json()["total"] == 1


def test_latency_ms() -> None:
    with LocalFhirServer(latency_ms=50, quiet=True) as slow:
        requests.get(f"{slow.base_url}/metadata", timeout=TIMEOUT)  # warm the connection path
        started = time.monotonic()
        resp = requests.get(f"{slow.base_url}/Patient", timeout=TIMEOUT)
        elapsed = time.monotonic() - started
    assert resp.status_code == 200
    assert elapsed >= 0.050


# --- fault injection -------------------------------------------------------------------------------


def test_fault_hang_read_timeout_fires(fhir: LocalFhirServer) -> None:
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(f"{fhir.fault_url('hang')}/Patient/p1", timeout=(2.0, 0.5))
    assert 0.5 <= time.monotonic() - started < 5


def test_fault_status_401(fhir: LocalFhirServer) -> None:
    resp = _get(f"{fhir.fault_url('status-401')}/Observation", patient="p1")
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert resp.json()["resourceType"] == "OperationOutcome"
    assert resp.json()["issue"][0]["code"] == "login"


def test_fault_scoped_to_resource_type(fhir: LocalFhirServer) -> None:
    base = fhir.fault_url("status-500", "Patient")
    assert _get(f"{base}/Patient/p1").status_code == 500
    healthy = _get(f"{base}/Observation", patient="p1", _count="1")
    assert healthy.status_code == 200
    assert healthy.json()["total"] == N_OBS + 1


def test_fault_html(fhir: LocalFhirServer) -> None:
    resp = _get(f"{fhir.fault_url('html')}/Observation", patient="p1")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/html")
    assert resp.text.lstrip().lower().startswith("<!doctype html")
    with pytest.raises(requests.exceptions.JSONDecodeError):
        resp.json()


def test_fault_truncated(fhir: LocalFhirServer) -> None:
    with pytest.raises(requests.exceptions.ChunkedEncodingError, match="IncompleteRead"):
        _get(f"{fhir.fault_url('truncated')}/Observation", patient="p1", _count="10")


def test_fault_wrong_type(fhir: LocalFhirServer) -> None:
    resp = _get(f"{fhir.fault_url('wrong-type')}/Observation", patient="p1")
    assert resp.status_code == 200
    assert resp.json()["resourceType"] == "Patient"


def test_fault_next_loop(fhir: LocalFhirServer) -> None:
    url = f"{fhir.fault_url('next-loop')}/Observation?patient=p1&_count=5"
    for _ in range(3):
        bundle = requests.get(url, timeout=TIMEOUT).json()
        assert len(bundle["entry"]) == 5
        next_url = {link["relation"]: link["url"] for link in bundle["link"]}["next"]
        assert next_url == url
        url = next_url


def test_fault_next_offsite(fhir: LocalFhirServer) -> None:
    bundle = _get(f"{fhir.fault_url('next-offsite')}/Observation", patient="p1", _count="5").json()
    links = {link["relation"]: link["url"] for link in bundle["link"]}
    assert links["next"] == "http://offsite.invalid/fhir/Observation?page=2"


def test_fault_reset(fhir: LocalFhirServer) -> None:
    with pytest.raises(requests.exceptions.ConnectionError):
        _get(f"{fhir.fault_url('reset')}/Patient/p1")


def test_fault_slow_sends_bytes_slowly(fhir: LocalFhirServer) -> None:
    started = time.monotonic()
    with requests.get(f"{fhir.fault_url('slow')}/Patient/p1", stream=True, timeout=(2.0, 1.0)) as resp:
        assert resp.status_code == 200
        first = resp.raw.read(3)
    assert first == b'{"r'
    assert time.monotonic() - started >= 0.4


def test_fault_huge_streams_over_40_mb(fhir: LocalFhirServer) -> None:
    received = 0
    with requests.get(f"{fhir.fault_url('huge')}/Observation", stream=True, timeout=(2.0, 10.0)) as resp:
        assert resp.status_code == 200
        assert "Content-Length" not in resp.headers
        for chunk in resp.iter_content(chunk_size=1024 * 1024):
            received += len(chunk)
            if received > HUGE_CAP:
                break
    assert 40 * 1024 * 1024 < received <= HUGE_CAP + 1024 * 1024


def test_fault_url_validation(fhir: LocalFhirServer) -> None:
    assert set(FAULT_MODES) >= {"hang", "huge", "reset"}
    with pytest.raises(ValueError, match="unknown fault mode"):
        fhir.fault_url("explode")
    assert _get(f"{fhir.origin}/fault/explode/fhir/Patient/p1").status_code == 400


def test_stop_is_idempotent() -> None:
    server = LocalFhirServer(quiet=True)
    server.stop()  # never started
    with server:
        base = server.base_url
        assert server.running
    assert not server.running
    server.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{base}/metadata", timeout=2)
    with pytest.raises(LocalFhirError):
        _ = server.base_url


def test_start_failure_reports_stderr(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"resourceType": "Bundle", "type": "transaction", "entry": [', encoding="utf-8")
    with pytest.raises(LocalFhirError, match="invalid JSON"):
        LocalFhirServer(load=[broken], quiet=True).start()
