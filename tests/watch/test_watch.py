"""``nms-cds watch`` against the real local FHIR server with every fixture scenario loaded: the worklist, the
exactly-once rule across two replicas (one killed mid-pass), delivery to a webhook and a FHIR Task."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests
from fhir.resources.R4B.task import Task

from cds_service.devtools import fixtures, localfhir
from cds_service.devtools.tools import load_fixtures
from cds_service.runtime import Runtime
from cds_service.store.sqlite import SqliteStore
from cds_service.store.worklist import Worklist
from cds_service.watch.deliver import Deliverer
from cds_service.watch.runner import Watcher
from tests.conftest import make_settings, require_local_fhir, start_group, stop_group
from tests.helpers.dbservers import PostgresServer, postgres  # noqa: F401  (session fixture)

pytestmark = pytest.mark.integration
require_local_fhir()

SCENARIOS = fixtures.load_scenarios()
ALERTING = {s.id: s.expected["hooks"]["patient-view"] for s in SCENARIOS if s.expected["hooks"]["patient-view"]}
# a record that names its drug only in free text (a brand name) cannot be found by a code search: the hooks
# find it when the chart is opened (docs/surveillance.md "What the watcher cannot see")
TEXT_ONLY = {"brand-name-free-text"}
FOUND = {k: v for k, v in ALERTING.items() if k not in TEXT_ONLY}


@pytest.fixture(scope="module")
def server() -> Iterator[localfhir.LocalFhirServer]:
    with localfhir.LocalFhirServer(port=0) as srv:
        assert load_fixtures(srv.base_url, None, None, rebase=False) == 0
        yield srv


def _runtime(server: localfhir.LocalFhirServer, data_dir: Path, **extra: Any) -> Runtime:
    settings = make_settings(fixed_now=fixtures.ANCHOR, fhir_allowlist=[server.base_url], data_dir=data_dir,
                             watch_fhir_server=server.base_url, **extra)
    return Runtime.build(settings)


def _found(entries: list[Any]) -> dict[str, str]:
    return {e.patient_ref.removeprefix("Patient/nms-"): e.indicator for e in entries}


def test_one_pass_puts_every_finding_on_the_worklist_once(server: localfhir.LocalFhirServer, tmp_path: Path) -> None:
    with _runtime(server, tmp_path) as runtime, requests.Session() as session:
        watcher = Watcher(runtime, session)
        first = watcher.run_pass()
        assert first.fhir_errors == 0 and first.store_errors == 0
        assert _found(Worklist(runtime.store).entries()) == FOUND
        # the cost is the patients on the drugs: 46 records on the server, the census names only those exposed
        assert first.patients_found < len(SCENARIOS)
        second = watcher.run_pass()
        assert (second.evaluated, second.new_entries) == (0, 0)  # held for the interval: nothing done twice
        # the next interval: everyone evaluated again, nothing raised twice
        later = Watcher(runtime, session, wall_clock=lambda: time.time() + runtime.settings.watch_interval_seconds)
        third = later.run_pass()
        assert third.evaluated == first.evaluated and third.new_entries == 0
        assert len(Worklist(runtime.store).entries()) == len(FOUND)


def test_the_same_finding_once_a_worsening_again(tmp_path: Path) -> None:
    store = SqliteStore.in_dir(tmp_path)
    try:
        worklist = Worklist(store)
        common = {"patient": "p", "patient_ref": "Patient/p", "summary": "s", "card_uuid": "u", "evidence": []}
        assert worklist.add(finding_key="warning|t0", indicator="warning", criteria_met_at=None, now=1.0, **common)
        assert worklist.add(finding_key="warning|t0", indicator="warning", criteria_met_at=None, now=2.0,
                            **common) is None
        rank = {"warning": 1, "critical": 2}
        assert not worklist.open_at_least("p", rank, 2, "|t0")  # critical is a worsening
        assert worklist.add(finding_key="critical|t0", indicator="critical", criteria_met_at=None, now=3.0, **common)
        assert worklist.open_at_least("p", rank, 1, "|t0")  # a later warning of the episode adds nothing
        first = worklist.entries()[0]
        with pytest.raises(ValueError, match="reason"):
            worklist.set_state(first.id, "dismissed", "", now=4.0)
        assert worklist.set_state(first.id, "dismissed", "seen at the bedside", now=4.0)
        assert [e.indicator for e in worklist.entries()] == ["critical"]
        assert worklist.lease("p", "a", until=10.0, now=5.0)
        assert not worklist.lease("p", "b", until=10.0, now=6.0)  # held by a
        assert worklist.lease("p", "b", until=20.0, now=11.0)  # a's lease ran out: taken over
    finally:
        store.close()


def _watch_env(server: localfhir.LocalFhirServer, data_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NMS_CDS_")}
    env.update({"NMS_CDS_ENVIRONMENT": "development", "NMS_CDS_FIXED_NOW": fixtures.ANCHOR.isoformat(),
                "NMS_CDS_FHIR_ALLOWLIST": server.base_url, "NMS_CDS_WATCH_FHIR_SERVER": server.base_url,
                "NMS_CDS_DATA_DIR": str(data_dir), "NMS_CDS_WATCH_INTERVAL_SECONDS": "5",
                "NMS_CDS_WATCH_LEASE_SECONDS": "5", "NMS_CDS_LOG_LEVEL": "WARNING", **extra})
    return env


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_two_replicas_one_killed_mid_pass(server: localfhir.LocalFhirServer, tmp_path: Path, backend: str,
                                          request: pytest.FixtureRequest) -> None:
    """Every finding reaches the worklist exactly once although replica A dies in the middle of its pass."""
    extra: dict[str, str] = {}
    if backend == "postgres":
        pg: PostgresServer = request.getfixturevalue("postgres")
        extra["NMS_CDS_DATABASE_URL"] = pg.new_database()
    env = _watch_env(server, tmp_path / "data", extra)
    command = [str(Path(sys.executable).with_name("nms-cds")), "watch"]
    settings = make_settings(data_dir=tmp_path / "data", **({"database_url": extra["NMS_CDS_DATABASE_URL"]}
                                                             if extra else {}))
    with Runtime.build(settings) as runtime, open(tmp_path / "a.log", "wb") as log_a, \
            open(tmp_path / "b.log", "wb") as log_b:  # the runtime creates the schema the replicas share
        worklist = Worklist(runtime.store)
        a = start_group(command, env=env, stdout=log_a, stderr=subprocess.STDOUT)
        b = start_group(command, env=env, stdout=log_b, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while len(worklist.entries()) < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert 0 < len(worklist.entries()) < len(FOUND), (
                "replica A should be killed in the middle of a pass:\n" + (tmp_path / "a.log").read_text()[-2000:])
            stop_group(a, signal.SIGKILL)
            while len(worklist.entries()) < len(FOUND) and time.monotonic() < deadline + 30:
                time.sleep(0.2)
            time.sleep(6)  # one more interval of B: nothing may be added twice
        finally:
            for proc in (a, b):
                if proc.poll() is None:
                    stop_group(proc)
        entries = worklist.entries()
    assert _found(entries) == FOUND
    assert len(entries) == len(FOUND)


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_delivery_to_a_webhook_and_as_fhir_tasks(server: localfhir.LocalFhirServer, tmp_path: Path) -> None:
    _Hook.received = []
    hook = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=hook.serve_forever, daemon=True)
    thread.start()
    try:
        with _runtime(server, tmp_path, watch_write_back=True) as runtime, requests.Session() as session:
            url = f"http://127.0.0.1:{hook.server_address[1]}/worklist"
            deliverer = Deliverer(session, webhook=url, fhir_base=server.base_url, timeout=(2.0, 5.0))
            result = Watcher(runtime, session, deliverer=deliverer).run_pass()
            assert result.delivered == len(FOUND)
            assert Worklist(runtime.store).undelivered() == []
            tasks = session.get(f"{server.base_url}/Task", params={"_count": "200"}, timeout=10).json()
    finally:
        hook.shutdown()
        hook.server_close()
        thread.join(5)
    assert len(_Hook.received) == len(FOUND)
    assert {r["patient"] for r in _Hook.received} == {f"Patient/nms-{k}" for k in FOUND}
    written = [e["resource"] for e in tasks.get("entry", [])]
    assert len(written) == len(FOUND)
    for resource in written:
        task = Task.model_validate(resource)
        assert task.status == "requested" and task.for_fhir is not None
        # no more of the patient than the card: the reference, the card's summary, evidence references
        assert set(resource) <= {"resourceType", "id", "meta", "status", "intent", "priority", "code",
                                 "description", "for", "authoredOn", "identifier", "input", "focus"}
