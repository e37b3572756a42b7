"""``make surveillance-bench``: background surveillance replayed as a stream of events.

A hospital census of ``--census`` patients (default 300) on the local FHIR server: the fixture scenarios and
the burden corpus's hard mimics (records WITHOUT NMS), and patients with no record of these drugs up to the
census. Over ``--hours`` (default 24) of simulated time ending at the fixtures' anchor, every resource is
posted when its own time comes, and ``nms-cds watch`` passes run every ``--interval`` simulated minutes
(default 5), as fast as the machine allows: minutes compressed into seconds.

"Criteria first met" for a scenario is the first pass time at which the same engine, given the record as it
stood then (prefetch, in process), shows a warning or critical card; the delay is from then to the worklist
entry. Prints and writes ``bench/results/surveillance.json``: delay median and worst, entries per 100
patient-days on antagonists by indicator, resources read per pass, critical entries on the burden corpus,
scenarios found; exits 1 when a target is missed (docs/surveillance.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.burden import _dated, snapshot  # noqa: E402
from bench.burden_records import records as mimic_records  # noqa: E402
from cds_service.app import create_app  # noqa: E402
from cds_service.config import Settings  # noqa: E402
from cds_service.devtools import fixtures  # noqa: E402
from cds_service.devtools.localfhir import LocalFhirServer  # noqa: E402
from cds_service.runtime import Runtime  # noqa: E402
from cds_service.services.templates import prefetch_templates  # noqa: E402
from cds_service.store.worklist import Worklist  # noqa: E402
from cds_service.watch.runner import Watcher  # noqa: E402

JsonDict = dict[str, Any]
RESULTS = ROOT / "bench" / "results" / "surveillance.json"
ALERTING = ("warning", "critical")


def corpus(census: int) -> list[JsonDict]:
    """(id, kind, patient_id, resources) of every patient of the census."""
    out: list[JsonDict] = []
    for s in fixtures.load_scenarios():
        resources = [e["resource"] for e in s.bundle["entry"]]
        out.append({"id": s.id, "kind": "scenario", "expected": s.expected["hooks"]["patient-view"],
                    "patient_id": s.request["context"]["patientId"], "resources": resources})
    for r in mimic_records():
        out.append({"id": r["id"], "kind": "burden", "expected": None, "patient_id": r["patient_id"],
                    "resources": r["resources"]})
    n = 0
    while len(out) < census:
        n += 1
        pid = f"census-{n:04d}"
        out.append({"id": pid, "kind": "census", "expected": None, "patient_id": pid,
                    "resources": [{"resourceType": "Patient", "id": pid, "active": True}]})
    return out


def _put_all(session: requests.Session, base: str, resources: list[JsonDict]) -> None:
    for i in range(0, len(resources), 200):
        chunk = resources[i:i + 200]
        body = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in chunk if r.get("id")]}
        answer = session.post(base, json=body, timeout=60, headers={"Content-Type": "application/fhir+json"})
        answer.raise_for_status()


def criteria_met(records: list[JsonDict], times: list[datetime]) -> dict[str, datetime]:
    """For every scenario, the first pass time at which patient-view (prefetch, in process) shows a card."""
    out: dict[str, datetime] = {}
    templates = prefetch_templates()
    store = tempfile.TemporaryDirectory(prefix="nms-cds-surveillance-met-")  # removed in the finally below
    settings = Settings(auth="off", environment="development", fixed_now=times[0], data_dir=Path(store.name))
    app = create_app(settings)
    runtime = app.extensions["nms_cds"]
    sim = {"now": times[0]}
    for service in runtime.services.values():
        service.engine.clock = lambda: sim["now"]
    try:
        client = app.test_client()
        for rec in records:
            if rec["kind"] != "scenario" or rec["expected"] not in ALERTING:
                continue
            for t in times:
                sim["now"] = t
                cut = snapshot(rec["resources"], t)
                body = {"hook": "patient-view", "hookInstance": "00000000-0000-4000-8000-000000000001",
                        "context": {"patientId": rec["patient_id"], "userId": "Practitioner/bench"},
                        "prefetch": fixtures.fill_prefetch(cut, templates, rec["patient_id"])}
                cards = client.post("/cds-services/nms-patient-view", json=body).get_json()["cards"]
                if cards and cards[0]["indicator"] in ALERTING:
                    out[rec["id"]] = t
                    break
    finally:
        runtime.close()
        store.cleanup()
    return out


def run(census: int, hours: float, interval_minutes: float) -> JsonDict:
    records = corpus(census)
    end = fixtures.ANCHOR
    start = end - timedelta(hours=hours)
    step = timedelta(minutes=interval_minutes)
    times = [start + step * i for i in range(int((end - start) / step) + 1)]
    undated = [r for rec in records for r in rec["resources"] if _dated(r) is None]
    dated = sorted(((when, r) for rec in records for r in rec["resources"] if (when := _dated(r)) is not None),
                   key=lambda x: x[0])
    met = criteria_met(records, times)
    by_patient = {f"Patient/{rec['patient_id']}": rec for rec in records}
    passes: list[JsonDict] = []
    with tempfile.TemporaryDirectory(prefix="nms-cds-surveillance-") as store, LocalFhirServer(port=0) as server, \
            requests.Session() as session:
        tmp = Path(store)
        _put_all(session, server.base_url, undated + [r for when, r in dated if when <= start])
        posted = sum(1 for when, _ in dated if when <= start)
        settings = Settings(auth="off", environment="development", data_dir=tmp, fhir_allowlist=[server.base_url],
                            watch_fhir_server=server.base_url, watch_interval_seconds=interval_minutes * 60,
                            fixed_now=start)
        with Runtime.build(settings) as runtime:
            sim = {"now": start}
            runtime.clock = lambda: sim["now"]
            for service in runtime.services.values():
                service.engine.clock = runtime.clock
            watcher = Watcher(runtime, session, wall_clock=lambda: sim["now"].timestamp())
            began = time.perf_counter()
            for t in times:
                sim["now"] = t
                due = [r for when, r in dated[posted:] if when <= t]
                if due:
                    _put_all(session, server.base_url, due)
                    posted += len(due)
                result = watcher.run_pass()
                passes.append({"at": t.isoformat(), "seconds": result.seconds, "patients": result.patients_found,
                               "evaluated": result.evaluated, "census_resources": result.census_resources,
                               "census_requests": result.census_requests, "new": result.new_entries,
                               "errors": result.fhir_errors + result.store_errors})
            wall = time.perf_counter() - began
            entries = Worklist(runtime.store).entries(("new", "seen", "resolved", "dismissed"))
    delays = []
    found: dict[str, str] = {}
    burden_critical = 0
    by_indicator: dict[str, int] = {}
    for e in entries:
        rec = by_patient.get(e.patient_ref)
        by_indicator[e.indicator] = by_indicator.get(e.indicator, 0) + 1
        if rec is None:
            continue
        if rec["kind"] == "burden" and e.indicator == "critical":
            burden_critical += 1
        if rec["kind"] == "scenario" and rec["id"] in met and rec["id"] not in found:
            found[rec["id"]] = e.indicator
            created = datetime.fromtimestamp(e.created_at, tz=start.tzinfo)
            delays.append((created - met[rec["id"]]).total_seconds() / 60)
    patient_days = sum(p["patients"] for p in passes) * interval_minutes / (60 * 24)
    missed = sorted(set(met) - set(found))
    result = {
        "census": len(records), "on_drugs_per_pass_median": statistics.median(p["patients"] for p in passes),
        "simulated_hours": hours, "interval_minutes": interval_minutes, "passes": len(passes),
        "wall_seconds": round(wall, 1),
        "pass_seconds_median": round(statistics.median(p["seconds"] for p in passes), 3),
        "evaluated_per_pass_median": statistics.median(p["evaluated"] for p in passes),
        "pass_seconds_max": round(max(p["seconds"] for p in passes), 3),
        "census_resources_per_pass_median": statistics.median(p["census_resources"] for p in passes),
        "census_requests_per_pass": max(p["census_requests"] for p in passes),
        "delay_minutes_median": round(statistics.median(delays), 1) if delays else None,
        "delay_minutes_worst": round(max(delays), 1) if delays else None,
        "scenarios_with_criteria_met": len(met),
        "criteria_first_met_during_replay": sum(1 for t in met.values() if t > start),
        "scenarios_found": len(found), "scenarios_missed": missed,
        "worsenings_raised": sum(1 for e in entries if e.indicator == "critical"
                                 and any(o.patient_ref == e.patient_ref and o.indicator == "warning"
                                         and o.created_at < e.created_at for o in entries)),
        "entries_for_patients_without_a_card_at_the_end": sorted(
            by_patient[e.patient_ref]["id"] for e in entries
            if e.patient_ref in by_patient and by_patient[e.patient_ref]["kind"] == "scenario"
            and by_patient[e.patient_ref]["expected"] not in ALERTING),
        "entries_by_indicator": by_indicator,
        "entries_per_100_patient_days": {k: round(100 * v / patient_days, 2) for k, v in by_indicator.items()}
        if patient_days else {},
        "burden_critical_entries": burden_critical, "errors": sum(p["errors"] for p in passes),
    }
    limit = interval_minutes + 1
    result["targets"] = {
        f"worst delay <= {limit:g} min": result["delay_minutes_worst"] is not None
        and result["delay_minutes_worst"] <= limit,
        "0 critical entries on the burden corpus": burden_critical == 0,
        "every NMS scenario found": not missed,
    }
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--census", type=int, default=300)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--interval", type=float, default=5.0, help="simulated minutes between passes")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.census, args.hours, args.interval)
    print(json.dumps(result, indent=2))
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if all(result["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
