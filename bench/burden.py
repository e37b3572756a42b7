"""``make burden``: alert burden of the service on realistic records WITHOUT NMS (the time-order and other-causes work).

Corpus: the repository's 25 Synthea bundles (``datasets/synthea-r4``) and the generated hard mimics of
``bench/burden_records.py``. Moments: one hour after the last febrile reading of every febrile episode
(febrile readings > 38.0 degC no more than 24 h apart), and one hour after the last observation. At every
moment a haloperidol draft is signed, once with prefetch and once through the local FHIR server (no prefetch,
the service queries the server). The record is cut at the moment (nothing dated later; observations of the
last 30 days), as the EHR would hold it then. Into every prefetch a febrile Observation and a CK of another
patient are injected: no card may use or name them.

Prints cards per indicator, per moment kind and per reason; writes ``bench/results/burden.json``; checks the
targets (0 critical and 0 warning where the only exposure is the draft, no other patient's data in any card,
every fixture scenario keeps its expected verdict) and exits 1 when one is missed.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.burden_records import records as mimic_records  # noqa: E402
from cds_service.app import create_app  # noqa: E402
from cds_service.clinical.valuesets import RXNORM, load  # noqa: E402
from cds_service.config import Settings  # noqa: E402
from cds_service.devtools import fixtures  # noqa: E402
from cds_service.devtools.localfhir import LocalFhirServer  # noqa: E402
from cds_service.services.templates import prefetch_templates  # noqa: E402

JsonDict = dict[str, Any]
URL = "/cds-services/nms-order-sign"
VS = load()
TEMP_CODES = set(VS.loinc_codes("body-temperature"))
FEVER = VS.thresholds["hyperthermia"]["threshold_cel"]
EPISODE_GAP = timedelta(hours=VS.thresholds["onset"]["episode_gap_hours"])
OBS_HISTORY = timedelta(days=30)
FOREIGN = "burden-foreign-patient"
RESULTS = ROOT / "bench" / "results" / "burden.json"


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _dated(resource: JsonDict) -> datetime | None:
    period = resource.get("effectivePeriod") or {}
    for value in (resource.get("effectiveDateTime"), period.get("start"), resource.get("authoredOn"),
                  resource.get("onsetDateTime"), resource.get("recordedDate"), resource.get("issued"),
                  (resource.get("period") or {}).get("start")):
        when = _time(value)
        if when is not None:
            return when
    return None


# --- corpus ----------------------------------------------------------------------------------------------

def synthea_records() -> list[JsonDict]:
    out = []
    for path in sorted((ROOT / "datasets" / "synthea-r4").glob("*/*.json")):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        urls = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}"
                for e in bundle["entry"] if e.get("fullUrl") and e["resource"].get("id")}
        text = json.dumps([e["resource"] for e in bundle["entry"]])
        text = re.sub(r'"(urn:uuid:[0-9a-fA-F-]+)"', lambda m, urls=urls: json.dumps(urls.get(m.group(1), m.group(1))),
                      text)
        resources = json.loads(text)
        patient = next(r for r in resources if r["resourceType"] == "Patient")
        out.append({"id": f"synthea/{path.parent.name}/{path.stem}", "kind": "synthea", "patient_id": patient["id"],
                    "resources": resources})
    return out


def moments(resources: list[JsonDict]) -> list[tuple[str, datetime]]:
    temps = []
    last: datetime | None = None
    for r in resources:
        if r.get("resourceType") != "Observation":
            continue
        when = _dated(r)
        if when is None:
            continue
        last = when if last is None or when > last else last
        codes = {c.get("code") for c in (r.get("code") or {}).get("coding", [])}
        value = (r.get("valueQuantity") or {}).get("value")
        if codes & TEMP_CODES and isinstance(value, int | float):
            unit = (r.get("valueQuantity") or {}).get("code") or ""
            celsius = (value - 32) * 5 / 9 if unit in ("[degF]", "degF") else value
            if celsius > FEVER:
                temps.append(when)
    temps.sort()
    out: list[tuple[str, datetime]] = []
    for i, when in enumerate(temps):
        if i + 1 == len(temps) or temps[i + 1] - when > EPISODE_GAP:
            out.append(("after-febrile-episode", when + timedelta(hours=1)))
    if last is not None:
        out.append(("after-last-observation", last + timedelta(hours=1)))
    return out


def snapshot(resources: list[JsonDict], now: datetime) -> list[JsonDict]:
    """The record as the EHR held it at ``now``."""
    out = []
    for r in resources:
        when = _dated(r)
        if when is not None and when > now:
            continue
        if r.get("resourceType") == "Observation" and when is not None and when < now - OBS_HISTORY:
            continue
        if r.get("resourceType") == "Condition":
            abated = _time(r.get("abatementDateTime"))
            if abated is not None and abated > now:  # not yet resolved at that moment
                r = {k: v for k, v in r.items() if k != "abatementDateTime"}
                r["clinicalStatus"] = {"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]}
        out.append(r)
    return out


def draft(patient_id: str) -> JsonDict:
    return {"resourceType": "MedicationRequest", "id": "burden-draft-haloperidol", "status": "draft",
            "intent": "order", "subject": {"reference": f"Patient/{patient_id}"},
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "5093", "display": "haloperidol"}],
                                          "text": "haloperidol 5 mg oral tablet"}}


def foreign(now: datetime) -> tuple[JsonDict, JsonDict]:
    def obs(i: str, code: str, value: float, unit: str) -> JsonDict:
        return {"resourceType": "Observation", "id": f"{FOREIGN}-{i}", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "subject": {"reference": f"Patient/{FOREIGN}"},
                "effectiveDateTime": (now - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}
    return obs("t", "8310-5", 40.1, "Cel"), obs("ck", "2157-6", 24000, "U/L")


def request(patient_id: str, now: datetime, *, prefetch: JsonDict | None, fhir_server: str | None) -> JsonDict:
    body: JsonDict = {"hook": "order-sign", "hookInstance": f"burden-{patient_id}-{now:%Y%m%d%H%M}",
                      "context": {"userId": "Practitioner/burden", "patientId": patient_id,
                                  "draftOrders": {"resourceType": "Bundle", "type": "collection",
                                                  "entry": [{"resource": draft(patient_id)}]}}}
    if prefetch is not None:
        body["prefetch"] = prefetch
    if fhir_server is not None:
        body["fhirServer"] = fhir_server
    return body


def reidentify(resources: list[JsonDict], old: str, new: str, prefix: str) -> list[JsonDict]:
    """A copy of one moment's snapshot as its own patient on the shared local server."""
    out = []
    for r in resources:
        r = copy.deepcopy(r)
        r = {k: v for k, v in r.items() if k not in ("encounter", "context", "requester", "performer", "recorder",
                                                    "asserter", "reasonReference", "basedOn", "partOf", "hasMember",
                                                    "derivedFrom", "insurance", "request", "informationSource")}
        r["id"] = new if r["resourceType"] == "Patient" else f"{prefix}{r['id']}"[:64]
        for key in ("subject", "patient"):
            if isinstance(r.get(key), dict):
                r[key] = {"reference": f"Patient/{new}"}
        ref = (r.get("medicationReference") or {}).get("reference")
        if isinstance(ref, str) and ref.startswith("Medication/"):
            r["medicationReference"] = {**r["medicationReference"], "reference": f"Medication/{prefix}{ref[11:]}"[:75]}
        out.append(r)
    return out


# --- analysis --------------------------------------------------------------------------------------------

def analyse(cards: list[JsonDict]) -> JsonDict:
    if not cards:
        return {"indicator": "none", "reasons": [], "draft_only": False, "foreign": False}
    card = cards[0]
    detail = card.get("detail", "")
    why = re.search(r"\*\*Why this card:\*\* (.*)\.\n", detail + "\n")
    reasons = [re.sub(r"\s*\(.*", "", r).strip() for r in why.group(1).split("; ")] if why else []
    exposure = detail.split("**Drug exposure:**")[1].split("\n\n")[0] if "**Drug exposure:**" in detail else ""
    lines = [ln for ln in exposure.splitlines() if ln.startswith("- **")]
    draft_only = bool(lines) and all("draft order (being signed)" in ln for ln in lines)
    text = json.dumps(cards, ensure_ascii=False)
    # named (its id) or used (its values: 40.1 degC, CK 24,000 U/L appear nowhere else in the corpus)
    used = FOREIGN in text or "40.1 °C" in text or "24,000 U/L" in text
    return {"indicator": card["indicator"], "reasons": reasons, "draft_only": draft_only or not lines,
            "foreign": used}


def settings_for(now: datetime, allow: list[str]) -> Settings:
    return Settings(auth="off", environment="development", fhir_allowlist=allow, fixed_now=now,
                    public_base_url="http://127.0.0.1:8080")


def run(limit: int | None = None, server: bool = True, corpus: list[JsonDict] | None = None) -> JsonDict:
    started = time.perf_counter()
    corpus = corpus if corpus is not None else synthea_records() + mimic_records()
    if limit:
        corpus = corpus[:limit]
    templates = prefetch_templates()
    plan = []
    for record in corpus:
        for kind, now in moments(record["resources"]):
            plan.append((record, kind, now, snapshot(record["resources"], now)))
    rows: list[JsonDict] = []
    # prefetch path, with another patient's fever and CK injected
    for record, kind, now, snap in plan:
        prefetch = fixtures.fill_prefetch(snap, templates, record["patient_id"])
        t, ck = foreign(now)
        for key, resource in (("temperature", t), ("labs", ck)):
            prefetch[key] = prefetch[key] or {"resourceType": "Bundle", "type": "searchset"}
            prefetch[key].setdefault("entry", []).append({"resource": resource})
        app = create_app(settings_for(now, ["http://127.0.0.1:1/fhir"]))
        response = app.test_client().post(URL, json=request(record["patient_id"], now, prefetch=prefetch,
                                                            fhir_server=None))
        app.extensions["nms_cds"].close()
        rows.append({"record": record["id"], "kind": record["kind"], "moment": kind, "now": now.isoformat(),
                     "path": "prefetch", "status": response.status_code,
                     **analyse(response.get_json().get("cards", []) if response.status_code == 200 else [])})
    # counterfactual (not a target): the same moments had haloperidol been given for 10 days already, to show
    # what the time-order rule holds back and how the other causes found temper the card
    for record, kind, now, snap in plan:
        given = {**draft(record["patient_id"]), "id": "burden-prior-haloperidol", "status": "active",
                 "authoredOn": (now - timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ")}
        prefetch = fixtures.fill_prefetch([*snap, given], templates, record["patient_id"])
        app = create_app(settings_for(now, ["http://127.0.0.1:1/fhir"]))
        response = app.test_client().post(URL, json=request(record["patient_id"], now, prefetch=prefetch,
                                                            fhir_server=None))
        app.extensions["nms_cds"].close()
        body = response.get_json()
        cards = body.get("cards", []) if response.status_code == 200 else []
        other = "Other causes weighed" in cards[0]["detail"] and "**found**" in cards[0]["detail"] if cards else False
        rows.append({"record": record["id"], "kind": record["kind"], "moment": kind, "now": now.isoformat(),
                     "path": "counterfactual-prior-exposure", "status": response.status_code,
                     **analyse(cards), "draft_only": False, "other_cause_found": other})
    # local FHIR server path: every moment's snapshot as its own patient
    if server:
        with tempfile.TemporaryDirectory() as tmp:
            ids = []
            for n, (record, _kind, _now, snap) in enumerate(plan):
                new = f"m{n}-{record['patient_id']}"[:64]
                folder = Path(tmp) / f"m{n:04d}"
                folder.mkdir()
                resources = reidentify(snap, record["patient_id"], new, f"m{n}-")
                (folder / "bundle.json").write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                                                                "entry": [{"resource": r} for r in resources]}))
                ids.append(new)
            with LocalFhirServer(load=[Path(tmp)], quiet=True) as fhir:
                for (record, kind, now, _snap), new in zip(plan, ids, strict=True):
                    app = create_app(settings_for(now, [fhir.base_url]))
                    response = app.test_client().post(URL, json=request(new, now, prefetch=None,
                                                                        fhir_server=fhir.base_url))
                    app.extensions["nms_cds"].close()
                    rows.append({"record": record["id"], "kind": record["kind"], "moment": kind,
                                 "now": now.isoformat(), "path": "fhir-server", "status": response.status_code,
                                 **analyse(response.get_json().get("cards", []) if response.status_code == 200
                                           else [])})
    sensitivity = scenario_verdicts()
    return summarise(rows, sensitivity, len(corpus), time.perf_counter() - started)


def scenario_verdicts() -> JsonDict:
    kept, changed = 0, []
    for scenario in fixtures.load_scenarios():
        app = create_app(settings_for(fixtures.ANCHOR, ["http://127.0.0.1:1/fhir"]))
        cards = app.test_client().post(URL, json=scenario.request).get_json()["cards"]
        app.extensions["nms_cds"].close()
        got = cards[0]["indicator"] if cards else None
        if got == scenario.expected["indicator"]:
            kept += 1
        else:
            changed.append({"scenario": scenario.id, "expected": scenario.expected["indicator"], "got": got})
    return {"scenarios": kept + len(changed), "kept": kept, "changed": changed}


def summarise(rows: list[JsonDict], sensitivity: JsonDict, records: int, seconds: float) -> JsonDict:
    by_indicator = Counter((r["path"], r["indicator"]) for r in rows)
    by_moment = Counter((r["path"], r["moment"], r["indicator"]) for r in rows)
    by_kind = Counter((r["kind"], r["indicator"]) for r in rows if r["path"] == "prefetch")
    by_reason = Counter((r["path"], reason) for r in rows for reason in r["reasons"])
    real = [r for r in rows if not r["path"].startswith("counterfactual")]
    draft_only_alerts = [r for r in real if r["indicator"] in ("critical", "warning") and r["draft_only"]]
    foreign = [r for r in real if r["foreign"]]
    errors = [r for r in rows if r["status"] != 200]
    targets = {
        "critical_or_warning_with_draft_only_exposure": len(draft_only_alerts),
        "cards_using_another_patients_data": len(foreign),
        "non_200_answers": len(errors),
        "scenario_verdicts_kept": f"{sensitivity['kept']}/{sensitivity['scenarios']}",
    }
    return {
        "records": records,
        "moments": sum(1 for r in rows if r["path"] == "prefetch"),
        "calls": len(rows),
        "seconds": round(seconds, 1),
        "by_indicator": {f"{p}/{i}": n for (p, i), n in sorted(by_indicator.items())},
        "by_moment": {f"{p}/{m}/{i}": n for (p, m, i), n in sorted(by_moment.items())},
        "by_record_kind": {f"{k}/{i}": n for (k, i), n in sorted(by_kind.items())},
        "by_reason": {f"{p}/{r}": n for (p, r), n in sorted(by_reason.items())},
        "targets": targets,
        "targets_met": not draft_only_alerts and not foreign and not errors and not sensitivity["changed"],
        "scenario_changes": sensitivity["changed"],
        "counterfactual_other_cause_found": sum(1 for r in rows if r.get("other_cause_found")),
        "alerts": [r for r in real if r["indicator"] != "none"][:50],
    }


def table(result: JsonDict) -> str:
    paths = ("prefetch", "fhir-server", "counterfactual-prior-exposure")
    lines = ["| moment kind | path | moments | critical | warning | info | no card |", "|---|---|---|---|---|---|---|"]
    for moment in ("after-febrile-episode", "after-last-observation"):
        for path in paths:
            counts = {i: result["by_moment"].get(f"{path}/{moment}/{i}", 0)
                      for i in ("critical", "warning", "info", "none")}
            total = sum(counts.values())
            if total:
                lines.append(f"| {moment} | {path} | {total} | {counts['critical']} | {counts['warning']} | "
                             f"{counts['info']} | {counts['none']} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="only the first N records (quick check)")
    parser.add_argument("--no-server", action="store_true", help="prefetch path only")
    args = parser.parse_args(argv)
    result = run(args.limit, server=not args.no_server)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"burden: {result['records']} records, {result['moments']} moments, {result['calls']} calls, "
          f"{result['seconds']} s")
    print(table(result))
    print("cards per record kind (prefetch):", json.dumps(result["by_record_kind"]))
    print("cards per reason:", json.dumps(result["by_reason"]))
    print("targets:", json.dumps(result["targets"]))
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0 if result["targets_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
