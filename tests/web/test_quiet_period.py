"""No nagging, through the Flask app: a card answered through the feedback endpoint is not shown again within
the quiet period, unless the verdict worsens or a decisive finding is new; order-sign always shows its card.

The record is the ``early-nms`` fixture (warning: olanzapine, one febrile reading, CK 2.5 x ULN, falling iron);
new readings are added to its prefetch. A store that fails never hides a card (fail open) and never gives a 500.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_service import metrics
from cds_service.devtools import fixtures
from cds_service.errors import StoreUnavailable
from cds_service.services.override_reasons import OVERRIDE_SYSTEM
from tests.conftest import app_for, make_settings

SCENARIO = fixtures.load_scenario("early-nms")
PV, OS, SIGN = "/cds-services/nms-patient-view", "/cds-services/nms-order-select", "/cds-services/nms-order-sign"


def request(hook: str = "patient-view", *additions: tuple[str, str, str, float, float]) -> dict[str, Any]:
    """The scenario's request for ``hook`` with observations added: (prefetch key, template id, new id, value,
    hours before the fixture's now)."""
    body = SCENARIO.request_for(hook)
    for key, template_id, new_id, value, hours in additions:
        bundle = body["prefetch"][key]
        template = next(e["resource"] for e in bundle["entry"] if e["resource"]["id"] == template_id)
        resource = copy.deepcopy(template)
        resource["id"] = new_id
        resource["valueQuantity"]["value"] = value
        resource["effectiveDateTime"] = (fixtures.ANCHOR - timedelta(hours=hours)).isoformat().replace("+00:00", "Z")
        bundle["entry"].insert(0, {"resource": resource})
    return body


LOWER_CK = ("labs", "early-nms-ck-2", "quiet-ck-lower", 300.0, 0.5)  # newer, lower: not decisive
HIGHER_CK = ("labs", "early-nms-ck-2", "quiet-ck-higher", 600.0, 0.5)  # 3 x ULN: decisive, still a warning
SECOND_FEVER = ("temperature", "early-nms-temp-4", "quiet-temp-2", 38.6, 0.5)  # hyperthermia met: critical


def cards(client: FlaskClient, url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.post(url, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    found: list[dict[str, Any]] = response.get_json()["cards"]
    return found


def send_feedback(client: FlaskClient, url: str, card: dict[str, Any], outcome: str = "overridden",
                  reason: dict[str, Any] | None = None, stamp: str = "2026-11-24T12:01:00Z") -> None:
    item: dict[str, Any] = {"card": card["uuid"], "outcome": outcome, "outcomeTimestamp": stamp}
    if outcome == "accepted":
        item["acceptedSuggestions"] = []
    elif reason is not None:
        item["overrideReason"] = {"reason": reason, "userComment": "seen at the bedside"}
    response = client.post(url + "/feedback", json={"feedback": [item]})
    assert response.status_code == 200 and response.get_json()["new"] == 1


@pytest.fixture
def quiet_app() -> Any:
    with app_for(make_settings()) as app:
        yield app


def test_override_silences_patient_view_until_worse_or_new(quiet_app: Flask) -> None:
    client = quiet_app.test_client()
    rt = quiet_app.extensions["nms_cds"]
    [first] = cards(client, PV, request())
    assert first["indicator"] == "warning"
    assert cards(client, PV, request())[0]["uuid"] == first["uuid"]  # no feedback yet: the same card again

    send_feedback(client, PV, first, reason=first["overrideReasons"][0])  # the 3.0 code the card offered
    assert cards(client, PV, request()) == []  # the next chart opening within the quiet period
    assert cards(client, PV, request("patient-view", LOWER_CK)) == []  # newer, lower CK: nothing decisive

    [higher] = cards(client, PV, request("patient-view", HIGHER_CK))  # a higher CK: decisive
    assert higher["indicator"] == "warning" and higher["uuid"] != first["uuid"]
    send_feedback(client, PV, higher, outcome="accepted")  # accepted quiets as well
    assert cards(client, PV, request("patient-view", HIGHER_CK)) == []

    [worse] = cards(client, PV, request("patient-view", HIGHER_CK, SECOND_FEVER))  # warning -> critical
    assert worse["indicator"] == "critical"

    # the audit trail: which card, why, until when, which answered card; no patient id anywhere
    rows = rt.store.report_rows(0)
    assert [(s.hook, s.answered_card_uuid) for s in rows.suppressed] == [
        ("patient-view", first["uuid"]), ("patient-view", first["uuid"]), ("patient-view", higher["uuid"])]
    assert all(s.until == pytest.approx(s.suppressed_at + 24 * 3600, abs=60) for s in rows.suppressed)
    assert all(SCENARIO.patient_id not in repr(s) for s in rows.suppressed)
    assert all(c.quiet_key and SCENARIO.patient_id not in c.quiet_key for c in rows.cards)


def test_order_sign_always_gets_its_card(quiet_app: Flask) -> None:
    client = quiet_app.test_client()
    [pv] = cards(client, PV, request())
    send_feedback(client, PV, pv, reason=pv["overrideReasons"][0])
    [sign] = cards(client, SIGN, request("order-sign"))
    send_feedback(client, SIGN, sign, reason=sign["overrideReasons"][1])
    for _ in range(2):
        assert len(cards(client, SIGN, request("order-sign"))) == 1
    assert cards(client, PV, request()) == []


def test_order_select_is_quieted_by_its_own_feedback(quiet_app: Flask) -> None:
    client = quiet_app.test_client()
    [pv] = cards(client, PV, request())
    send_feedback(client, PV, pv, reason={"system": OVERRIDE_SYSTEM, "code": "already-managed"})  # project code
    [picked] = cards(client, OS, request("order-select"))  # the patient-view answer does not quiet a new pick
    send_feedback(client, OS, picked, reason=picked["overrideReasons"][2])
    assert cards(client, OS, request("order-select")) == []
    assert cards(client, OS, request("order-select", SECOND_FEVER))[0]["indicator"] == "critical"


def test_the_card_returns_when_the_period_ends(quiet_app: Flask) -> None:
    client = quiet_app.test_client()
    rt = quiet_app.extensions["nms_cds"]
    start = rt.wall_clock()
    [card] = cards(client, PV, request())
    send_feedback(client, PV, card, reason=card["overrideReasons"][0])
    rt.wall_clock = lambda: start + 23.9 * 3600
    assert cards(client, PV, request()) == []
    rt.wall_clock = lambda: start + 24.1 * 3600
    assert cards(client, PV, request())[0]["uuid"] == card["uuid"]  # the same card, its uuid stable


def test_an_override_without_a_reason_does_not_quiet(quiet_app: Flask) -> None:
    client = quiet_app.test_client()
    [card] = cards(client, PV, request())
    send_feedback(client, PV, card, reason=None)
    assert cards(client, PV, request())[0]["uuid"] == card["uuid"]


def test_a_quiet_period_of_zero_turns_it_off() -> None:
    with app_for(make_settings(quiet_period_hours=0)) as app:
        client = app.test_client()
        [card] = cards(client, PV, request())
        send_feedback(client, PV, card, reason=card["overrideReasons"][0])
        assert cards(client, PV, request())[0]["uuid"] == card["uuid"]
        # a newer, lower CK changes the evidence and so the uuid (which the quiet period does not key on)
        assert cards(client, PV, request("patient-view", LOWER_CK))[0]["uuid"] != card["uuid"]


def _failures() -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value("nms_cds_quiet_store_failures_total", {"hook": "patient-view"})
    return value or 0.0


@pytest.mark.parametrize("failing", ["answered"])  # the hash key is read once, at start (store/keys.py)
def test_a_failing_store_never_hides_a_card_nor_answers_500(quiet_app: Flask, failing: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    client = quiet_app.test_client()
    rt = quiet_app.extensions["nms_cds"]
    [card] = cards(client, PV, request())
    send_feedback(client, PV, card, reason=card["overrideReasons"][0])
    assert cards(client, PV, request()) == []
    metrics.quiet_store_failure("patient-view")  # the counter exists before it is read
    before = _failures()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("the SQLite database is locked by another process (SQLITE_BUSY)")

    monkeypatch.setattr(rt.store, failing, broken)
    assert cards(client, PV, request())[0]["uuid"] == card["uuid"]  # fail open: shown
    assert _failures() == before + 1


def test_a_removed_database_file_shows_the_card(tmp_path: Any) -> None:
    """A real store failure (the SQLite file deleted under the running app): the card is shown, 200."""
    with app_for(make_settings(data_dir=tmp_path / "data")) as app:
        client = app.test_client()
        [card] = cards(client, PV, request())
        send_feedback(client, PV, card, reason=card["overrideReasons"][0])
        rt = app.extensions["nms_cds"]
        rt.store.close()
        for path in (tmp_path / "data").iterdir():
            path.unlink()
        assert cards(client, PV, request())[0]["uuid"] == card["uuid"]


def test_report_counts_suppressed_repeats_per_hook(quiet_app: Flask) -> None:
    from cds_service import report

    client = quiet_app.test_client()
    rt = quiet_app.extensions["nms_cds"]
    [card] = cards(client, PV, request())
    send_feedback(client, PV, card, reason=card["overrideReasons"][2])  # risk-benefit-ratio (3.0 code)
    for _ in range(3):
        assert cards(client, PV, request()) == []
    built = report.build(rt.store.report_rows(0), since=0, now=rt.wall_clock())
    assert built.suppressed == 3 and built.suppressed_by_hook == {"patient-view": 3}
    assert built.override_reasons == {"benefit-outweighs-risk": 1}  # the 3.0 code counted as the project reason
    text = report.render_text(built)
    assert "Repeats not shown (quiet)" in text and "patient-view" in text
