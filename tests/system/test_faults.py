"""Fault injection against the real local FHIR server: every fault mode of ``fhir_server/`` (see its README),
with the whole server faulty, and mixed: only Observation faulty, only MedicationRequest faulty, only
Condition faulty (the rest of the server healthy).

Each case sends the ``classic-nms`` request of each hook (order-sign; order-select with the haloperidol draft
selected; patient-view, no draft) with NO prefetch and ``fhirServer`` = the fault URL, and asserts:

(a) wall time ≤ budget × 1.1 + ``ALLOWANCE`` (Flask test client, assessment and card rendering);
(b) 200 or 412 (412 with an OperationOutcome), never a 5xx;
(c) no card claims evidence it did not see: with Observation unreadable the answer is a 412 (the three
    observation keys failed), with MedicationRequest unreadable the card says "could not retrieve medication
    orders" and cites no record order (patient-view, which has no draft, then has no exposure and stays
    quiet), with Condition unreadable it says it could not check the NMS history,
    and where a fault only cuts paging the evidence is the healthy evidence, counted once, and the card
    says the data were only partly read;
(d) the next normal request (healthy base URL) gets the classic critical card, within the budget.

Plus: ``next-offsite`` never contacts (or even resolves) the offsite host, ``next-loop`` terminates after
a bounded number of requests, ``huge`` is cut at ``fhir_max_response_bytes`` (5 MB here).
"""

from __future__ import annotations

import copy
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from requests.adapters import HTTPAdapter

from cds_service.app import create_app
from cds_service.devtools import fixtures, localfhir
from tests.conftest import make_settings, require_local_fhir
from tests.helpers.cdshooks_check import response_problems

pytestmark = pytest.mark.integration

require_local_fhir()

URL = "/cds-services/nms-order-sign"
URLS = {"order-sign": URL, "order-select": "/cds-services/nms-order-select",
        "patient-view": "/cds-services/nms-patient-view"}
BUDGET = 1.5
ALLOWANCE = 0.35  # seconds on top of budget × 1.1: Flask test client, clinical assessment, card rendering
MAX_BYTES = 5 * 1024 * 1024
SCENARIO = fixtures.load_scenario("classic-nms")
CLASSIC_SUMMARY = "Possible NMS: haloperidol + T 39.4 °C ×3 + CK 9,400 U/L (47×ULN) + iron 5.4 µmol/L"
DRAFT_REF = "MedicationRequest/classic-nms-draft-haloperidol"
PAGING_ONLY = {"next-loop", "next-offsite"}  # faults that leave the first page intact
SCOPES = {"alone": None, "observation": "Observation", "medications": "MedicationRequest", "conditions": "Condition"}
RESULTS: list[dict[str, Any]] = []


# --- outbound traffic spy -------------------------------------------------------------------------------

class Spy:
    """Records every URL the service's HTTP adapter sends and every host name it resolves."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.urls: list[str] = []
        self.hosts: list[str] = []

    def reset(self) -> None:
        with self.lock:
            self.urls.clear()
            self.hosts.clear()


@pytest.fixture(scope="module")
def spy() -> Iterator[Spy]:
    record = Spy()
    send, resolve = HTTPAdapter.send, socket.getaddrinfo

    def spying_send(self: HTTPAdapter, request: Any, *args: Any, **kwargs: Any) -> Any:
        with record.lock:
            record.urls.append(str(request.url))
        return send(self, request, *args, **kwargs)

    def spying_resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        with record.lock:
            record.hosts.append(str(host))
        return resolve(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(HTTPAdapter, "send", spying_send)
        mp.setattr(socket, "getaddrinfo", spying_resolve)
        yield record


# --- server and app --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[localfhir.LocalFhirServer]:
    root = tmp_path_factory.mktemp("faults")
    (root / "classic-nms").mkdir()
    (root / "classic-nms" / "bundle.json").write_text(json.dumps(SCENARIO.bundle), encoding="utf-8")
    with localfhir.LocalFhirServer(load=[root], quiet=True) as srv:
        yield srv


@pytest.fixture(scope="module")
def app(server: localfhir.LocalFhirServer, spy: Spy) -> Iterator[Flask]:
    settings = make_settings(fhir_allowlist=[server.origin], hook_budget_seconds=BUDGET, fhir_read_timeout=1.0,
                             fixed_now=fixtures.ANCHOR, fhir_max_response_bytes=MAX_BYTES, log_level="WARNING")
    application = create_app(settings)
    yield application
    application.extensions["nms_cds"].close()


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not RESULTS:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line(f"fault matrix (budget {BUDGET} s, limit {BUDGET * 1.1 + ALLOWANCE:.2f} s):")
        for row in RESULTS:
            reporter.write_line(f"  {row['mode']:22} {row['scope']:25} {row['status']} {row['seconds']:.2f} s  "
                                f"{row['outcome']}; next healthy call {row['healthy_seconds']:.2f} s")


def call(app: Flask, fhir_server: str, hook: str = "order-sign") -> tuple[int, Any, float]:
    body = copy.deepcopy(SCENARIO.request_for(hook))
    body.pop("prefetch")
    body["fhirServer"] = fhir_server
    started = time.perf_counter()
    response = app.test_client().post(URLS[hook], json=body)
    elapsed = time.perf_counter() - started
    return response.status_code, response.get_json(), elapsed


def check_healthy(app: Flask, server: localfhir.LocalFhirServer, hook: str = "order-sign") -> float:
    status, body, elapsed = call(app, server.base_url, hook)
    assert status == 200, body
    assert response_problems(body) == []
    (card,) = body["cards"]
    assert (card["indicator"], card["summary"]) == ("critical", CLASSIC_SUMMARY)
    assert "could not retrieve" not in card["detail"]
    assert elapsed <= BUDGET, f"healthy call after a fault took {elapsed:.2f} s"
    return elapsed


def test_healthy_baseline(app: Flask, server: localfhir.LocalFhirServer) -> None:
    check_healthy(app, server)


# --- the matrix -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("hook", list(URLS))
@pytest.mark.parametrize("scope", list(SCOPES))
@pytest.mark.parametrize("mode", localfhir.FAULT_MODES)
def test_fault(app: Flask, server: localfhir.LocalFhirServer, spy: Spy, mode: str, scope: str, hook: str) -> None:
    check_healthy(app, server, hook)  # warm connections; the fault case starts from a healthy state
    spy.reset()
    resource_type = SCOPES[scope]
    status, body, elapsed = call(app, server.fault_url(mode, resource_type), hook)
    sent = list(spy.urls)

    # (a) within the budget
    limit = BUDGET * 1.1 + ALLOWANCE
    assert elapsed <= limit, f"{mode}/{scope}: {elapsed:.2f} s > {limit:.2f} s"
    # (b) 200 or 412 with an OperationOutcome
    assert status in (200, 412), f"{mode}/{scope}: {status} {body}"
    outcome: str
    if status == 412:
        assert body["resourceType"] == "OperationOutcome"
        diagnostics = body["issue"][0]["diagnostics"]
        assert "could not be obtained" in diagnostics
        outcome = "412 " + diagnostics[:90]
    else:
        assert response_problems(body) == []
        outcome = ", ".join(f"{c['indicator']}: {c['summary']}" for c in body["cards"]) or "no card"

    # (c) no card claims evidence it did not see
    cards = body.get("cards", []) if status == 200 else []
    text = "\n".join(c["summary"] + "\n" + c["detail"] for c in cards)
    if mode in PAGING_ONLY:
        assert status == 200, f"{mode}/{scope}: the first pages are intact, expected cards"
        (card,) = cards
        # the evidence is exactly the healthy evidence: a loop must not count the same readings twice
        assert (card["indicator"], card["summary"]) == ("critical", CLASSIC_SUMMARY)
        assert "only partly" in card["detail"]
        assert ("outside the fhirServer base" if mode == "next-offsite" else "loops back") in card["detail"]
    elif scope in ("alone", "observation"):
        # no observation could be read: temperatures, vital signs and labs all failed → 412, never a card
        assert status == 412, f"{mode}/{scope}: expected 412, got {status}: {outcome}"
        for key in ("temperature", "vitals", "labs"):
            assert f"{key}: " in body["issue"][0]["diagnostics"]
    elif scope == "medications" and hook in ("patient-view", "order-select"):
        # no readable record exposure before onset: the chart check stays quiet, and order-select leaves the
        # "check incomplete" card to signing (it claims nothing either way)
        assert status == 200 and cards == [], f"{mode}/{scope}/{hook}: {outcome}"
    elif scope == "medications":
        # medication orders unreadable: the card stands on the draft and the observations, and says so
        assert status == 200
        (card,) = cards
        assert "could not retrieve" in card["detail"] and "medication orders" in card["detail"]
        cited = {part.split("`")[0] for part in text.split("`MedicationRequest/")[1:]}
        assert {f"MedicationRequest/{c}" for c in cited} <= {DRAFT_REF}, f"cites orders it did not see: {cited}"
        # record orders are shown with their state and time ("order active 22 Nov 12:00"); the draft without
        assert not re.search(r"\border (active|stopped|completed|on-hold)\b", card["detail"]), card["detail"]
    else:
        # the NMS history is unreadable: same evidence, and the card says the history could not be checked
        assert status == 200
        (card,) = cards
        assert (card["indicator"], card["summary"]) == ("critical", CLASSIC_SUMMARY)
        assert "could not retrieve" in card["detail"] and "conditions (NMS history)" in card["detail"]
        assert "Previous NMS" not in card["detail"]

    # mode-specific guarantees
    if mode == "next-offsite":
        assert not [u for u in sent if urlsplit(u).hostname != "127.0.0.1"], sent
        assert "offsite.invalid" not in spy.hosts
    if mode == "next-loop":
        assert len(sent) <= 7 * 2 + 1, f"next-loop: {len(sent)} requests"
        assert max(sent.count(u) for u in sent) <= 2
    if mode == "huge" and status == 412:
        assert f"response larger than {MAX_BYTES} bytes" in body["issue"][0]["diagnostics"]

    # (d) the next normal request succeeds with the classic critical card
    healthy = check_healthy(app, server, hook)
    RESULTS.append({"mode": mode, "scope": f"{scope}/{hook}", "status": status, "seconds": elapsed,
                    "outcome": outcome[:110], "healthy_seconds": healthy})


# --- answers no fault mode produces: a hostile FHIR server ------------------------------------------------

def _deep_observation(depth: int) -> str:
    extension = '{"url": "http://x", "valueString": "a"}'
    for _ in range(depth):
        extension = '{"url": "http://x", "extension": [' + extension + "]}"
    return ('{"resourceType": "Observation", "id": "deep", "status": "final", "code": {"coding": [{"system": '
            '"http://loinc.org", "code": "8310-5"}]}, "subject": {"reference": "Patient/nms-classic-nms"}, '
            '"effectiveDateTime": "2026-11-24T10:00:00Z", "valueQuantity": {"value": 41.5, "unit": "Cel"}, '
            '"extension": [' + extension + "]}")


HOSTILE = {
    # an Observation whose extensions nest 200 deep: valid JSON, but the FHIR models recurse too deep on it
    "deep-resource": lambda: '{"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": '
                             + _deep_observation(200) + "}]}",
    # a JSON number of 5000 digits: Python refuses to convert it (sys.get_int_max_str_digits)
    "long-number": lambda: '{"resourceType": "Bundle", "type": "searchset", "total": ' + "9" * 5000 + "}",
    # JSON nested 100,000 deep: the decoder itself runs out of stack
    "deep-json": lambda: "[" * 100_000 + "]" * 100_000,
}


@pytest.fixture(scope="module")
def hostile() -> Iterator[str]:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            mode, _, rest = self.path.lstrip("/").partition("/fhir/")
            if rest.startswith("Observation"):
                body = HOSTILE[mode]().encode()
            elif rest.startswith("Patient/"):
                body = b'{"resourceType": "Patient", "id": "nms-classic-nms"}'
            else:
                body = b'{"resourceType": "Bundle", "type": "searchset", "total": 0}'
            self.send_response(200)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("mode", list(HOSTILE))
def test_hostile_fhir_answers(hostile: str, server: localfhir.LocalFhirServer, mode: str) -> None:
    settings = make_settings(fhir_allowlist=[hostile, server.origin], hook_budget_seconds=BUDGET,
                             fhir_read_timeout=1.0, fixed_now=fixtures.ANCHOR, log_level="WARNING")
    application = create_app(settings)
    try:
        status, body, elapsed = call(application, f"{hostile}/{mode}/fhir")
        assert status in (200, 412), f"{mode}: {status} {body}"
        assert elapsed <= BUDGET * 1.1 + ALLOWANCE
        if status == 412:
            assert body["resourceType"] == "OperationOutcome"
        else:
            assert response_problems(body) == []
            # nothing readable was seen: no card may claim the 41.5 °C of the unreadable Observation
            assert all("41.5" not in c["summary"] + c["detail"] for c in body["cards"])
            assert all(c["indicator"] != "critical" for c in body["cards"])
        RESULTS.append({"mode": f"hostile:{mode}", "scope": "alone", "status": status, "seconds": elapsed,
                        "outcome": (body.get("issue", [{}])[0].get("diagnostics") if status == 412 else
                                    ", ".join(f"{c['indicator']}: {c['summary']}" for c in body["cards"])
                                    or "no card")[:110],
                        "healthy_seconds": check_healthy(application, server)})
    finally:
        application.extensions["nms_cds"].close()


def test_fault_modes_are_all_covered() -> None:
    assert set(localfhir.FAULT_MODES) >= {"hang", "slow", "status-500", "status-502", "status-503", "status-401",
                                          "status-403", "status-404", "html", "truncated", "wrong-type", "huge",
                                          "next-loop", "next-offsite", "reset"}

