"""Silent mode shows nothing and hides nothing: the audit rows of a silent run equal the cards of a live run.

On every fixture scenario in all three hooks (prefetch path; silent by the NMS_CDS_POLICY_SILENT default) and on
every moment of ``make burden``'s corpus (bench/burden.py: the 25 Synthea records and the generated hard mimics,
a haloperidol draft signed at each moment, and the same moments with haloperidol given for 10 days, the path
that does give cards; silent by the per-request CRD option). A silent answer is ``{"cards": []}``; each card a
live run returns is audited once, ``mode`` silent, with the same uuid and indicator and the whole card.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from flask import Flask

from bench import burden
from bench.burden_records import records as mimic_records
from cds_service import audit
from cds_service.devtools import fixtures
from cds_service.services.client_options import REQUEST_EXTENSION
from cds_service.services.templates import prefetch_templates
from tests.conftest import app_for, make_settings

SILENT_OPTION = {"extension": {REQUEST_EXTENSION: {"silent": True}}}


def _audited(app: Flask) -> dict[str, Any]:
    rows = app.extensions["nms_cds"].store.report_rows(0.0).cards
    return {row.card_uuid: row for row in rows}


def _token(app: Flask, patient_id: str) -> str | None:
    rt = app.extensions["nms_cds"]
    return audit.patient_token(patient_id, rt.hash_key, opt_in=rt.settings.audit_patient_ids)


def _mismatches(app: Flask, live: Iterable[tuple[str, str, list[dict[str, Any]]]]) -> list[str]:
    """Every difference between the live cards (label, patient id, cards) and the silent app's audit rows."""
    rows = _audited(app)
    problems, expected = [], set()
    for label, patient_id, cards in live:
        for card in cards:
            expected.add(card["uuid"])
            row = rows.get(card["uuid"])
            if row is None:
                problems.append(f"{label}: card {card['indicator']} not audited")
                continue
            stored = json.loads(row.card or "null")
            want = json.loads(audit.stored_card(card, patient_id, _token(app, patient_id)))
            if (row.mode, row.indicator, stored) != ("silent", card["indicator"], want):
                problems.append(f"{label}: audit row differs ({row.mode}, {row.indicator})")
    problems += [f"audited but not shown live: {uuid}" for uuid in set(rows) - expected]
    return problems


def test_silent_audit_equals_the_live_cards_on_every_fixture_scenario_in_every_hook() -> None:
    scenarios = fixtures.load_scenarios()
    live_runs: list[tuple[str, str, list[dict[str, Any]]]] = []
    with app_for(make_settings(fixed_now=fixtures.ANCHOR)) as live, \
            app_for(make_settings(fixed_now=fixtures.ANCHOR, policy_silent=True)) as silent:
        for scenario in scenarios:
            for hook in fixtures.HOOKS:
                body = scenario.request_for(hook)
                shown = live.test_client().post(f"/cds-services/nms-{hook}", json=body)
                quiet = silent.test_client().post(f"/cds-services/nms-{hook}", json=body)
                assert shown.status_code == quiet.status_code == 200, (scenario.id, hook)
                assert quiet.get_json() == {"cards": []}, (scenario.id, hook)
                live_runs.append((f"{scenario.id} {hook}", body["context"]["patientId"], shown.get_json()["cards"]))
        assert _mismatches(silent, live_runs) == []
        assert all(row.mode == "live" and row.card is None for row in _audited(live).values())
    cards = sum(len(c) for _, _, c in live_runs)
    # 46 scenarios x 3 hooks = 138 calls; most give a card (the exact count moves with the fixture library)
    assert len(live_runs) == len(scenarios) * 3 and cards >= len(scenarios)


def _burden_moments() -> list[tuple[str, str, datetime, list[dict[str, Any]]]]:
    corpus = burden.synthea_records() + mimic_records()
    return [(record["id"], record["patient_id"], now, burden.snapshot(record["resources"], now))
            for record in corpus for _kind, now in burden.moments(record["resources"])]


def test_silent_audit_equals_the_live_cards_on_the_burden_corpus() -> None:
    """All 84 moments of the 46 records, each as make burden signs it (another patient's fever and CK
    injected) and once more with haloperidol given for 10 days: 168 requests, each answered live and silent."""
    templates = prefetch_templates()
    moments = _burden_moments()
    calls = cards = 0
    problems: list[str] = []
    for record_id, patient_id, now, snap in moments:
        given = {**burden.draft(patient_id), "id": "burden-prior-haloperidol", "status": "active",
                 "authoredOn": (now - timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ")}
        with app_for(make_settings(fixed_now=now)) as app:
            live_runs = []
            for label, resources in (("draft", snap), ("given-10-days", [*snap, given])):
                prefetch = fixtures.fill_prefetch(resources, templates, patient_id)
                if label == "draft":
                    t, ck = burden.foreign(now)
                    for key, resource in (("temperature", t), ("labs", ck)):
                        prefetch[key] = prefetch[key] or {"resourceType": "Bundle", "type": "searchset"}
                        prefetch[key].setdefault("entry", []).append({"resource": resource})
                body = burden.request(patient_id, now, prefetch=prefetch, fhir_server=None)
                body["hookInstance"] += f"-{label}"
                client = app.test_client()
                # silent first: a card uuid is audited once, so the live call after it adds no row
                quiet = client.post(burden.URL, json={**body, **SILENT_OPTION})
                shown = client.post(burden.URL, json=body)
                assert quiet.status_code == shown.status_code == 200, (record_id, label)
                assert quiet.get_json() == {"cards": []}
                live_runs.append((f"{record_id} {now:%Y-%m-%dT%H:%M} {label}", patient_id, shown.get_json()["cards"]))
                calls += 1
                cards += len(shown.get_json()["cards"])
            problems += _mismatches(app, live_runs)
    assert problems == []
    assert len(moments) == 84 and calls == 168
    assert cards > 0  # the given-10-days path gives cards, so the comparison is not of empty lists
