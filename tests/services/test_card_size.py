"""Cards a clinician takes in at a glance: every warning and critical card of every fixture scenario, in all three
hooks, has a short summary, what to do now and the decisive findings first (≤ 600 rendered characters), a whole
detail ≤ 1,500 characters in a fixed order, no resource id in its text, times in the site's zone, and the trend
view's SMART link."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from flask.testing import FlaskClient

from cds_service.clinical import assess
from cds_service.clinical.model import (
    Assessment,
    ClinicalInput,
    Coding,
    HistoryInput,
    MedicationInput,
    ObservationInput,
)
from cds_service.clinical.valuesets import ICD10CM, RXNORM
from cds_service.config import Settings
from cds_service.config_report import load_settings
from cds_service.devtools import fixtures
from cds_service.errors import ConfigError
from cds_service.services.card_detail import DETAIL_LIMIT, PART_BREAK
from cds_service.services.card_time import CardStyle, data_zone, localise, when
from cds_service.services.cards import TREND_LABEL, build_cards
from tests.conftest import app_for, make_settings
from tests.helpers.card_size import card_kind, first_part, rendered

SCENARIOS = fixtures.load_scenarios()
FIRST_PART_LIMIT = 600
SUMMARY_LIMIT = 140
_ID = re.compile(r"\b(Patient|Observation|Condition|AllergyIntolerance|Medication\w*|ServiceRequest|Encounter)/\S")
_COUNT = re.compile(r"\b\d+/\d+\b")  # "63/63"
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}")
_TIME = re.compile(r"\b\d{1,2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{2}:\d{2}\b")


@pytest.fixture
def settings() -> Settings:
    return make_settings(fixed_now=fixtures.ANCHOR)


def _cards(client: FlaskClient, scenario: fixtures.Scenario, hook: str) -> list[dict[str, Any]]:
    response = client.post(f"/cds-services/nms-{hook}", json=scenario.request_for(hook))
    assert response.status_code == 200, response.get_data(as_text=True)
    cards: list[dict[str, Any]] = response.get_json()["cards"]
    return cards


def _problems(card: dict[str, Any]) -> list[str]:
    summary, detail = card["summary"], card["detail"]
    head, _, rest = detail.partition(PART_BREAK)
    out = []
    if len(summary) >= SUMMARY_LIMIT:
        out.append(f"summary {len(summary)} characters")
    if len(rendered(head)) > FIRST_PART_LIMIT:
        out.append(f"first part {len(rendered(head))} rendered characters")
    if len(detail) > DETAIL_LIMIT:
        out.append(f"detail {len(detail)} characters")
    if not re.match(r"\*\*(Now|Before signing)\b", detail):
        out.append("the detail does not start with what to do now")
    bullets = [line for line in head.splitlines() if line.startswith("- ")]
    if card_kind(card) != "rechallenge" and not 2 <= len(bullets) <= 4:
        out.append(f"{len(bullets)} decisive findings")
    if card_kind(card) != "rechallenge" and not _TIME.search(head):
        out.append("no time on the decisive findings")
    if not rest:
        out.append("no second part")
    order = [rest.find(mark) for mark in ("| IEC criterion |", "**Other causes**", "**Data:**") if mark in rest]
    if len(order) < 2 or order != sorted(order) or "| IEC criterion |" not in rest or "**Data:**" not in rest:
        out.append(f"parts out of order: {order}")
    if summary in detail:
        out.append("the detail repeats the summary")
    for text in (summary, detail):
        if _ID.search(text) or _COUNT.search(text):
            out.append(f"resource id or count in the text: {(_ID.search(text) or _COUNT.search(text))}")
        if _ISO.search(text):
            out.append("an ISO time in the text")
    if not any(link == {"label": TREND_LABEL, "url": "http://127.0.0.1:8080/app/launch.html", "type": "smart"}
               for link in card["links"]):
        out.append("no trend view link")
    return out


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_every_warning_and_critical_card_is_short_and_ordered(client: FlaskClient,
                                                               scenario: fixtures.Scenario) -> None:
    problems = [f"{hook}: {p}" for hook in fixtures.HOOKS for card in _cards(client, scenario, hook)
                if card["indicator"] in ("warning", "critical") for p in _problems(card)]
    assert problems == []


def test_the_fixture_library_has_every_card_kind(client: FlaskClient) -> None:
    kinds = {card_kind(card) for s in SCENARIOS for hook in fixtures.HOOKS for card in _cards(client, s, hook)}
    assert {"critical", "warning", "rechallenge", "withdrawal"} <= kinds


def test_rechallenge_says_previous_nms_documented_and_claims_nothing_current(client: FlaskClient) -> None:
    (card,) = _cards(client, fixtures.load_scenario("past-nms-rechallenge"), "order-sign")
    assert card["indicator"] == "warning"
    assert card["summary"] == "Previous NMS documented: review before signing haloperidol (re-challenge)"
    head = first_part(card["detail"])
    assert head.startswith("**Before signing haloperidol: previous NMS documented")
    assert "No current NMS finding in the data seen" in head
    text = (card["summary"] + card["detail"]).lower()
    assert "consistent" not in text and "possible neuroleptic malignant syndrome" not in text
    assert "re-challenge only ≥ 2 weeks after full resolution" in head
    assert "Condition: Malignant neuroleptic syndrome (ICD-10-CM G21.0), recorded 24 Nov 2024" in head


def test_withdrawal_never_calls_the_stopped_drug_a_dopamine_antagonist(client: FlaskClient) -> None:
    for scenario in ("dopaminergic-withdrawal", "reconciliation-levodopa-stopped"):
        (card,) = _cards(client, fixtures.load_scenario(scenario), "patient-view")
        assert card_kind(card) == "withdrawal"
        assert "dopamine antagonist" not in card["summary"] + card["detail"]
        assert "consider whether levodopa should be restarted" in first_part(card["detail"])
        assert "| Dopaminergic drug stopped before onset | **yes** |" in card["detail"]


def test_every_card_keeps_its_data_line(client: FlaskClient) -> None:
    for scenario in SCENARIOS:
        for hook in fixtures.HOOKS:
            for card in _cards(client, scenario, hook):
                data = [line for line in card["detail"].splitlines() if line.startswith("**Data:** ")]
                # a word about what could not be read, or that nothing was
                said = re.search(r"could not be (read|identified)|no resource unreadable|without a readable", data[0])
                assert len(data) == 1 and (said or "**Incomplete:**" in card["detail"]), scenario.id


def test_the_uln_multiple_is_the_one_the_threshold_uses(client: FlaskClient) -> None:
    (card,) = _cards(client, fixtures.load_scenario("early-nms"), "order-sign")
    assert "(2.5×ULN)" in card["summary"]
    assert "CK 500 U/L at " in card["detail"] and "= 2.5 × ULN 200 U/L (criterion ≥ 4 × ULN)" in card["detail"]
    assert "| CK ≥ 4 × ULN | no |" in card["detail"]


def test_times_default_to_the_offset_of_the_data(client: FlaskClient) -> None:
    (card,) = _cards(client, fixtures.load_scenario("classic-nms"), "order-sign")
    assert "- T 39.4 °C at 24 Nov 02:00" in card["detail"] and "times UTC." in card["detail"]
    shifted = _shift(fixtures.load_scenario("classic-nms").request, timezone(timedelta(hours=5, minutes=30)))
    (card,) = client.post("/cds-services/nms-order-sign", json=shifted).get_json()["cards"]
    assert "- T 39.4 °C at 24 Nov 07:30" in card["detail"] and "times UTC+05:30." in card["detail"]


def test_times_in_the_configured_zone() -> None:
    with app_for(make_settings(fixed_now=fixtures.ANCHOR, time_zone="Europe/Berlin")) as app:
        client = app.test_client()
        for hook in fixtures.HOOKS:
            (card,) = _cards(client, fixtures.load_scenario("classic-nms"), hook)
            assert "- T 39.4 °C at 24 Nov 03:00" in card["detail"], hook  # 02:00 UTC is 03:00 CET
            assert "CK 9,400 U/L at 24 Nov 09:00" in card["detail"]
            assert "times CET." in card["detail"] and "UTC" not in card["detail"]


def test_an_unknown_time_zone_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NMS_CDS_TIME_ZONE", "Mars/Olympus_Mons")
    with pytest.raises(ConfigError, match="NMS_CDS_TIME_ZONE='Mars/Olympus_Mons': not a known IANA time zone"):
        load_settings()


def test_time_words() -> None:
    moment = datetime(2026, 12, 6, 13, 5, tzinfo=UTC)
    assert when(moment, UTC) == "6 Dec 13:05"
    assert localise("max 39.4 °C at 2026-12-06 13:05 UTC", timezone(timedelta(hours=1))) == "max 39.4 °C at 6 Dec 14:05"
    assert data_zone([{"effectiveDateTime": "2026-12-06T13:05:00+01:00"},
                      {"effectiveDateTime": "2026-12-06T14:05:00+01:00"},
                      {"issued": "2026-12-06T13:05:00Z"}]) == timezone(timedelta(hours=1))
    assert data_zone([{"effectiveDateTime": "2026-12-06"}]) == UTC


def _shift(request: dict[str, Any], zone: timezone) -> dict[str, Any]:
    """``request`` with every UTC timestamp written as the same instant in ``zone``."""
    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?Z", value):
            return datetime.fromisoformat(value).astimezone(zone).isoformat()
        return value
    shifted: dict[str, Any] = walk(copy.deepcopy(request))
    return shifted


def _assess(meds: tuple[MedicationInput, ...], observations: tuple[ObservationInput, ...],
            **kw: Any) -> Assessment:
    return assess(ClinicalInput(now=_NOW, medications=meds, observations=observations, **kw))


_NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
_DRAFT = MedicationInput("MedicationRequest/d", True, "draft", (Coding(RXNORM, "5093"),))
_FEVER = tuple(ObservationInput(f"Observation/t{h}", "final", ("8310-5",), v, "Cel", _NOW - timedelta(hours=h))
               for h, v in ((30, 38.6), (20, 39.1), (6, 38.9)))
_NMS = HistoryInput("condition", (Coding(ICD10CM, "G21.0"),), "Neuroleptic malignant syndrome",
                    _NOW - timedelta(days=400), "confirmed", "Condition/c1")


def test_a_fever_before_the_drug_is_named_on_the_rechallenge_card() -> None:
    a = _assess((_DRAFT,), _FEVER, history=(_NMS,))
    assert a.indicator == "warning" and a.findings_before_exposure
    (card,) = build_cards(a, "hook", "p1")
    assert card_kind(card) == "rechallenge"
    head = first_part(card["detail"])
    assert "Fever or CK rise already recorded before any dopamine antagonist" in head
    assert len(rendered(head)) <= FIRST_PART_LIMIT and len(card["detail"]) <= DETAIL_LIMIT
    assert "Condition/c1" not in card["detail"]


def test_the_incomplete_card_names_what_it_could_not_read_once() -> None:
    a = _assess((_DRAFT,), (), missing=("vital signs", "laboratory results"))
    assert a.indicator == "info"
    (card,) = build_cards(a, "hook", "p1", style=CardStyle(trend_url="https://cds.example.org/app/launch.html"))
    assert card["summary"] == "NMS check incomplete for haloperidol: could not retrieve vital signs, laboratory results"
    assert card["detail"].startswith("**Before signing haloperidol: look at temperature and CK yourself.**")
    assert card["detail"].count("vital signs, laboratory results") == 1  # on the Incomplete line only
    assert "**Incomplete:** could not retrieve vital signs, laboratory results" in card["detail"]
    assert "Other causes" not in card["detail"]  # an incomplete check claims no finding and weighs no cause
    assert all(link["type"] == "absolute" for link in card["links"])  # no trend view for an incomplete check


def test_long_record_text_keeps_the_first_part_short() -> None:
    history = tuple(HistoryInput("condition", (Coding(ICD10CM, "G21.0"),), f"Neuroleptic malignant syndrome {i} "
                                 + "with a very long free-text description " * 8, _NOW - timedelta(days=400 + i),
                                 "confirmed", f"Condition/c{i}") for i in range(3))
    drafts = tuple(MedicationInput(f"MedicationRequest/d{i}", True, "draft", (Coding(RXNORM, code),))
                   for i, code in enumerate(("5093", "2403", "6915")))  # haloperidol, chlorpromazine, metoclopramide
    for a in (_assess(drafts, (), history=history), _assess(drafts, _FEVER[1:], history=history)):
        (card,) = build_cards(a, "hook", "p1")
        assert len(rendered(first_part(card["detail"]))) <= FIRST_PART_LIMIT, card["detail"]
        assert len(card["detail"]) <= DETAIL_LIMIT and len(card["summary"]) < SUMMARY_LIMIT
