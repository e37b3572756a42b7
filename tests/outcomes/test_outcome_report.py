"""``nms-cds report --outcomes``: what happened after the cards, on known numbers.

Every fixture scenario's patient-view card is served through the app by one of two EHR clients, with the
audit clock pinned to the fixtures' anchor; ``fhir_fixtures/outcomes/`` holds what followed (NMS coded,
dantrolene, the antagonist stopped, intensive care, one diagnosis after the horizon, one before the card).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import responses

from cds_service import report
from cds_service.audit import patient_token
from cds_service.devtools import fixtures
from cds_service.fhir.paging import PageLimits
from cds_service.outcomes import detect, records, summary
from cds_service.outcomes.exposure_days import patient_days
from tests.conftest import REPO, app_for, make_settings
from tests.helpers.jwt_helpers import ec_key, jwks, make_token, write_trusted_clients

ANCHOR = fixtures.ANCHOR
BASE = "http://127.0.0.1:8080"
CLIENT_A, CLIENT_B = "https://ehr-a.example.org", "https://ehr-b.example.org"
OUTCOMES = REPO / "fhir_fixtures" / "outcomes"
SCENARIOS = fixtures.load_scenarios()
ALERTING = [s for s in SCENARIOS if s.expected["hooks"]["patient-view"]]


def _at(hours: float) -> str:
    return (ANCHOR + timedelta(hours=hours)).isoformat()


def _export(tmp: Path) -> Path:
    """The scenarios' records and their outcomes as one export directory."""
    out = tmp / "export"
    out.mkdir()
    for s in SCENARIOS:
        (out / f"{s.id}.json").write_text(json.dumps(s.bundle), encoding="utf-8")
    for path in OUTCOMES.glob("*.json"):
        (out / f"outcome-{path.name}").write_bytes(path.read_bytes())
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Any], bytes, Path]:
    """Patient-view for every scenario, alternately from client A and client B: (audit rows, hash key, data dir)."""
    tmp = tmp_path_factory.mktemp("outcomes")
    key_a, key_b = ec_key("client-a"), ec_key("client-b")
    clients = write_trusted_clients(tmp / "clients.json", [{"iss": CLIENT_A, "jwks": jwks(key_a)},
                                                           {"iss": CLIENT_B, "jwks": jwks(key_b)}])
    settings = make_settings(auth="jwt", trusted_clients=clients, public_base_url=BASE, fixed_now=ANCHOR,
                             data_dir=tmp / "data")
    with app_for(settings) as app:
        runtime = app.extensions["nms_cds"]
        runtime.wall_clock = ANCHOR.timestamp  # the audit's "served at" is the scenarios' moment
        client = app.test_client()
        url = "/cds-services/nms-patient-view"
        for n, s in enumerate(SCENARIOS):
            key, iss = (key_a, CLIENT_A) if n % 2 == 0 else (key_b, CLIENT_B)
            token = make_token(key, iss=iss, aud=BASE + url, now=time.time())
            response = client.post(url, json=s.request_for("patient-view"),
                                    headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200, response.get_data(as_text=True)
        rows = runtime.store.report_rows(0.0)
        key = runtime.hash_key
    return rows.cards, key, tmp / "data"


def _build(cards: list[Any], key: bytes, export: Path) -> summary.OutcomeReport:
    return summary.build(cards, records.from_export(export), since=(ANCHOR - timedelta(days=30)).timestamp(),
                         until=ANCHOR.timestamp() + 3600, horizon=timedelta(days=14),
                         token_of=lambda pid: patient_token(pid, key, opt_in=False))


def test_ppv_and_action_rates_on_the_fixtures(served: tuple[list[Any], bytes, Path], tmp_path: Path) -> None:
    cards, key, _ = served
    result = _build(cards, key, _export(tmp_path)).as_json()
    n = len(ALERTING)
    assert result["overall"]["cards"] == n
    assert result["cards_without_record"] == 0
    # NMS coded within 14 days: classic-nms, hyperthermia-without-ck, depot-paliperidone (iron-pattern's is
    # after the horizon, other-cause-infection's before the card)
    assert result["overall"]["ppv"] == {"numerator": 3, "denominator": n, "value": round(3 / n, 4)}
    # any outcome: those three, and the antagonist stopped in metoclopramide and early-nms
    assert result["overall"]["acted_on"]["numerator"] == 5
    assert result["overall"]["outcomes"] == {"nms-coded": 3, "specific-treatment": 2, "antagonist-stopped": 3,
                                             "icu-transfer": 2}
    # first action: 1 h (classic), 2 h (hyperthermia, metoclopramide), 3 h (early-nms), 8 h (depot)
    assert result["overall"]["hours_to_first_action"] == {"median": 2.0, "max": 8.0}
    assert result["by_indicator"]["warning"]["acted_on"]["numerator"] == 1  # early-nms
    assert result["by_indicator"]["critical"]["ppv"]["numerator"] == 3
    by_client = result["by_client"]
    assert set(by_client) == {CLIENT_A, CLIENT_B}
    assert by_client[CLIENT_A]["cards"] + by_client[CLIENT_B]["cards"] == n
    expected_a = sum(1 for i, s in enumerate(SCENARIOS) if i % 2 == 0 and s in ALERTING)
    assert by_client[CLIENT_A]["cards"] == expected_a
    coded = {"classic-nms", "hyperthermia-without-ck", "depot-paliperidone"}
    coded_a = sum(1 for i, s in enumerate(SCENARIOS) if i % 2 == 0 and s.id in coded)
    assert by_client[CLIENT_A]["ppv"]["numerator"] == coded_a
    assert by_client[CLIENT_B]["ppv"]["numerator"] == 3 - coded_a
    assert set(result["by_hook"]) == {"patient-view"}
    assert result["by_rule"]["hyperthermia"]["cards"] > 0
    assert result["patients_on_antagonists"] >= n - 3  # the withdrawal-only records have no antagonist
    assert result["firing_rate_per_100_patient_days"] > 0


def test_no_patient_identifier_in_the_output(served: tuple[list[Any], bytes, Path], tmp_path: Path) -> None:
    cards, key, _ = served
    result = _build(cards, key, _export(tmp_path))
    text = summary.render_text(result) + json.dumps(result.as_json())
    assert not [s.id for s in SCENARIOS if f"nms-{s.id}" in text]
    assert "hmac-sha256" not in text
    assert "PPV (NMS coded)" in summary.render_text(result)


def test_the_command_line(served: tuple[list[Any], bytes, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    _, _, data_dir = served
    monkeypatch.setenv("NMS_CDS_DATA_DIR", str(data_dir))
    export = _export(tmp_path)
    parser = report.argparse.ArgumentParser()
    sub = parser.add_subparsers()
    report.register(sub)
    args = parser.parse_args(["report", "--outcomes", "--export", str(export), "--since", "520w", "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["overall"]["ppv"]["numerator"] == 3
    chart = tmp_path / "outcomes.png"
    args = parser.parse_args(["report", "--outcomes", "--export", str(export), "--since", "520w",
                              "--png", str(chart)])
    assert args.func(args) == 0
    assert chart.read_bytes().startswith(b"\x89PNG")
    assert "Warning and critical cards:" in capsys.readouterr().out
    args = parser.parse_args(["report", "--outcomes", "--since", "520w"])
    assert args.func(args) == 2
    assert "--export DIR or --fhir-base URL" in capsys.readouterr().err
    args = parser.parse_args(["report", "--outcomes", "--export", str(tmp_path / "nope")])
    assert args.func(args) == 1
    args = parser.parse_args(["report", "--json", "--since", "520w"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["cards"] >= len(ALERTING)


# --- the pieces ----------------------------------------------------------------------------------------------


def _med(kind: str, text: str, status: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": kind, "id": "x", "status": status, "subject": {"reference": "Patient/p"},
            "medicationCodeableConcept": {"text": text}, **extra}


def test_events_of_each_kind_and_their_window() -> None:
    found = detect.events([
        {"resourceType": "Condition", "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm",
                                                           "code": "G21.0"}]}, "recordedDate": _at(5)},
        _med("MedicationRequest", "bromocriptine 2.5 mg", "active", intent="order", authoredOn=_at(2)),
        _med("MedicationAdministration", "Dantrium IV", "entered-in-error", effectiveDateTime=_at(1)),
        _med("MedicationRequest", "haloperidol", "stopped", intent="order", authoredOn=_at(-30),
             dispenseRequest={"validityPeriod": {"end": _at(3)}}),
        _med("MedicationRequest", "haloperidol", "stopped", intent="order", authoredOn=_at(-30),
             meta={"lastUpdated": _at(1)}),  # no end date: when it stopped is unknown
        _med("MedicationStatement", "risperidone", "completed", effectivePeriod={"start": _at(-90), "end": _at(-1)}),
        {"resourceType": "Encounter", "status": "in-progress", "class": {"code": "IMP"},
         "location": [{"physicalType": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                                                    "code": "ICU"}]}, "period": {"start": _at(7)}}]},
    ])
    first = detect.after(found, ANCHOR, timedelta(days=14))
    assert first == {"specific-treatment": ANCHOR + timedelta(hours=2),
                     "antagonist-stopped": ANCHOR + timedelta(hours=3),
                     "nms-coded": ANCHOR + timedelta(hours=5), "icu-transfer": ANCHOR + timedelta(hours=7)}
    assert detect.after(found, ANCHOR, timedelta(hours=4)).keys() == {"specific-treatment", "antagonist-stopped"}


def test_patient_days_merge_overlaps_and_clip_to_the_window() -> None:
    record = [
        _med("MedicationRequest", "haloperidol", "active", intent="order", authoredOn=_at(-48)),
        _med("MedicationAdministration", "haloperidol IM", "completed", effectiveDateTime=_at(-30)),
        _med("MedicationRequest", "olanzapine", "entered-in-error", intent="order", authoredOn=_at(-400)),
        _med("MedicationRequest", "paracetamol", "active", intent="order", authoredOn=_at(-400)),
    ]
    assert patient_days(record, {}, ANCHOR - timedelta(days=30), ANCHOR) == pytest.approx(2.0)
    assert patient_days(record, {}, ANCHOR - timedelta(hours=24), ANCHOR) == pytest.approx(1.0)


def test_export_reading_counts_what_it_cannot_use(tmp_path: Path) -> None:
    (tmp_path / "a.ndjson").write_text("\n".join(json.dumps(r) for r in [
        _med("MedicationRequest", "haloperidol", "active", intent="order"),
        {"resourceType": "Condition", "code": {"text": "x"}},  # no subject: not a valid Condition
        {"resourceType": "Condition", "code": {"text": "x"},  # a logical reference proves no patient
         "subject": {"identifier": {"system": "urn:mrn", "value": "1"}}},
        {"resourceType": "MedicationRequest", "status": "bogus", "subject": {"reference": "Patient/p"}},
        {"resourceType": "Observation", "status": "final"},  # not an outcome type: skipped, not counted
    ]) + "\n", encoding="utf-8")
    (tmp_path / "b.json").write_text("{not json", encoding="utf-8")
    found = records.from_export(tmp_path)
    assert {k: len(v) for k, v in found.by_patient.items()} == {"p": 1}
    assert found.unreadable["export file not JSON"] == 1
    assert found.unreadable["Condition: no literal patient reference"] == 1
    assert found.unreadable["Condition: missing subject"] == 1
    assert sum(v for k, v in found.unreadable.items() if k.startswith("MedicationRequest:")) == 1


@responses.activate
def test_server_reading_follows_pages_up_to_the_cap() -> None:
    base = "https://fhir.example.org/r4"

    def page(kind: str, n: int, more: bool) -> dict[str, Any]:
        link = [{"relation": "next", "url": f"{base}/{kind}?page={n + 1}"}] if more else []
        return {"resourceType": "Bundle", "type": "searchset", "link": link,
                "entry": [{"resource": _med("MedicationRequest", "haloperidol", "active", intent="order")}]
                if kind == "MedicationRequest" else []}

    for kind in records.TYPES:
        responses.get(f"{base}/{kind}?_count=200", json=page(kind, 1, kind == "MedicationRequest"))
    for n in (2, 3):
        responses.get(f"{base}/MedicationRequest?page={n}", json=page("MedicationRequest", n, True))
    limits = PageLimits(connect_timeout=1.0, read_timeout=2.0, max_pages=3)
    with requests.Session() as session:
        found = records.from_server(base, session, limits, token="t0k")
    assert len(found.by_patient["p"]) == 3
    assert found.truncated == ["MedicationRequest"]
    assert all(c.request.headers["Authorization"] == "Bearer t0k" for c in responses.calls)
    responses.get(f"{base}/Condition?_count=200", json={"resourceType": "OperationOutcome"})
    with requests.Session() as session, pytest.raises(ValueError, match="Condition search"):
        records.from_server(base, session, limits)


def test_outcome_fixtures_are_generated(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("nms_build_outcomes", REPO / "fhir_fixtures" / "build_outcomes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(tmp_path)
    built = {p.name: p.read_bytes() for p in (tmp_path / "outcomes").glob("*.json")}
    committed = {p.name: p.read_bytes() for p in OUTCOMES.glob("*.json")}
    assert built == committed, "run: .venv/bin/python fhir_fixtures/build_outcomes.py"
    assert datetime.now(UTC) > ANCHOR


@pytest.mark.integration
def test_the_same_numbers_from_the_local_fhir_server(served: tuple[list[Any], bytes, Path], tmp_path: Path) -> None:
    """``--fhir-base``: the scenarios and their outcomes on the real local FHIR server, read type by type."""
    from cds_service.devtools import localfhir
    from cds_service.devtools.tools import load_fixtures
    from tests.conftest import require_local_fhir

    require_local_fhir()
    cards, key, _ = served
    with localfhir.LocalFhirServer(port=0) as srv, requests.Session() as session:
        assert load_fixtures(srv.base_url, None, None, rebase=False) == 0
        for path in sorted(OUTCOMES.glob("*.json")):
            bundle = json.loads(path.read_text(encoding="utf-8"))
            transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": e["resource"], "request": {
                    "method": "PUT", "url": f"{e['resource']['resourceType']}/{e['resource']['id']}"}}
                for e in bundle["entry"]]}
            answer = session.post(srv.base_url, json=transaction, timeout=10,
                                  headers={"Content-Type": "application/fhir+json"})
            assert answer.status_code == 200, answer.text[:300]
        limits = PageLimits(connect_timeout=2.0, read_timeout=10.0, max_pages=20, page_size=50)
        found = records.from_server(srv.base_url, session, limits)
    assert found.truncated == []
    from_server = summary.build(cards, found, since=(ANCHOR - timedelta(days=30)).timestamp(),
                                until=ANCHOR.timestamp() + 3600, horizon=timedelta(days=14),
                                token_of=lambda pid: patient_token(pid, key, opt_in=False)).as_json()
    from_export = _build(cards, key, _export(tmp_path)).as_json()
    assert from_server["overall"] == from_export["overall"]
    assert from_server["by_client"] == from_export["by_client"]
