"""Per-client policy (cds_service/auth/policy.py) and the CRD-form options (cds_service/services/client_options.py):
read from the trusted clients file, advertised in discovery, narrowed per request, never widened."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from cds_service import config_report
from cds_service.auth import TrustedClientsError, load_trusted_clients
from cds_service.auth.policy import ClientPolicy
from cds_service.config_report import load_settings
from cds_service.devtools import fixtures
from cds_service.errors import ConfigError
from cds_service.services import client_options
from cds_service.services.client_options import OPTIONS_EXTENSION, REQUEST_EXTENSION
from tests.conftest import app_for, make_settings
from tests.helpers.jwt_helpers import SigningKey, ec_key, jwks, make_token, write_trusted_clients
from tests.helpers.outcome import issue

SCENARIOS = {s.id: s for s in fixtures.load_scenarios()}
BASE = "http://127.0.0.1:8080"
LIVE, QUIET = "https://live.example.org", "https://quiet.example.org"


def call(app: Flask, hook: str, scenario: str = "classic-nms", options: dict[str, Any] | None = None,
         headers: dict[str, str] | None = None) -> Any:
    body = SCENARIOS[scenario].request_for(hook)
    if options is not None:
        body = {**body, "extension": {REQUEST_EXTENSION: options}}
    return app.test_client().post(f"/cds-services/nms-{hook}", json=body, headers=headers or {})


def bearer(key: SigningKey, iss: str, path: str) -> dict[str, str]:
    claims = {"tenant": "ward-7"} if iss == QUIET else {}
    return {"Authorization": "Bearer " + make_token(key, iss=iss, aud=BASE + path, now=time.time(), **claims)}


def indicators(response: Any) -> list[str]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return [card["indicator"] for card in response.get_json()["cards"]]


# --- the trusted clients file ---------------------------------------------------------------------------------

def test_each_client_gets_its_own_policy_in_discovery_and_answers(tmp_path: Path) -> None:
    key = ec_key("policy-key")
    path = write_trusted_clients(tmp_path / "clients.json", [
        {"iss": LIVE, "jwks": jwks(key)},
        {"iss": QUIET, "jwks": jwks(key), "tenant": "ward-7",
         "policy": {"mode": "silent", "hooks": ["order-sign", "order-select"], "allow_critical": False,
                    "indicators": ["warning", "critical"], "max_cards": 1}},
    ])
    settings = make_settings(auth="jwt", trusted_clients=path, fixed_now=fixtures.ANCHOR, public_base_url=BASE)
    with app_for(settings) as app:
        client = app.test_client()
        live = client.get("/cds-services", headers=bearer(key, LIVE, "/cds-services")).get_json()
        quiet = client.get("/cds-services", headers=bearer(key, QUIET, "/cds-services")).get_json()
        assert [s["hook"] for s in live["services"]] == ["patient-view", "order-select", "order-sign"]
        assert [s["hook"] for s in quiet["services"]] == ["order-select", "order-sign"]
        defaults = {o["code"]: o["default"] for o in quiet["services"][0]["extension"][OPTIONS_EXTENSION]}
        assert defaults == {"silent": True, "max-cards": 1, "allow-critical": False, "info-cards": False}
        live_defaults = {o["code"]: o["default"] for o in live["services"][0]["extension"][OPTIONS_EXTENSION]}
        assert live_defaults == {"silent": False, "max-cards": 10, "allow-critical": True, "info-cards": True}

        path_sign = "/cds-services/nms-order-sign"
        shown = call(app, "order-sign", headers=bearer(key, LIVE, path_sign))
        assert indicators(shown) == ["critical"]
        silent = call(app, "order-sign", headers=bearer(key, QUIET, path_sign))
        assert silent.get_json() == {"cards": []}
        # a disabled hook: no evaluation, no card (and no audit row)
        view = call(app, "patient-view", headers=bearer(key, QUIET, "/cds-services/nms-patient-view"))
        assert view.status_code == 200 and view.get_json() == {"cards": []}
        rows = app.extensions["nms_cds"].store.report_rows(0.0).cards
        (card,) = shown.get_json()["cards"]
        # the live card was audited first; the silent call of the same order keeps that row (one per card uuid)
        assert [(r.card_uuid, r.mode, r.client_iss) for r in rows] == [(card["uuid"], "live", LIVE)]


def test_a_silent_client_gets_its_critical_card_audited_as_warning(tmp_path: Path) -> None:
    key = ec_key("policy-key")
    path = write_trusted_clients(tmp_path / "clients.json", [
        {"iss": QUIET, "jwks": jwks(key), "policy": {"mode": "silent", "allow_critical": False}}])
    settings = make_settings(auth="jwt", trusted_clients=path, fixed_now=fixtures.ANCHOR, public_base_url=BASE,
                             audit_patient_ids=True)
    with app_for(settings) as app:
        response = call(app, "order-sign", headers=bearer(key, QUIET, "/cds-services/nms-order-sign"))
        assert response.get_json() == {"cards": []}
        (row,) = app.extensions["nms_cds"].store.report_rows(0.0).cards
        stored = json.loads(row.card or "{}")
        assert (row.mode, row.indicator, stored["indicator"]) == ("silent", "warning", "warning")
        assert stored["summary"] and stored["detail"] and stored["source"]["topic"]["code"] == "15244003"


@pytest.mark.parametrize(("policy", "words"), [
    ({"mode": "quiet"}, "'mode'"),
    ({"max_cards": 0}, "'max_cards'"),
    ({"max_cards": 11}, "'max_cards'"),
    ({"hooks": []}, "'hooks'"),
    ({"hooks": ["order-sign", "order-sign"]}, "lists a value twice"),
    ({"hooks": ["medication-prescribe"]}, "'hooks[0]': input should be 'patient-view', 'order-select' or"),
    ({"indicators": ["urgent"]}, "'indicators[0]'"),
    ({"allow_critical": "no"}, "'allow_critical'"),
    ({"colour": "red"}, "'colour' is unknown (known: hooks, indicators, mode, max_cards, allow_critical)"),
    ("silent", "'policy' must be a JSON object"),
])
def test_a_bad_policy_stops_the_start_naming_the_entry_and_member(tmp_path: Path, policy: Any, words: str) -> None:
    path = write_trusted_clients(tmp_path / "clients.json", [
        {"iss": LIVE, "jwks": jwks(ec_key())}, {"iss": QUIET, "jwks": jwks(ec_key()), "policy": policy}])
    with pytest.raises(TrustedClientsError) as excinfo:
        load_trusted_clients(path)
    message = str(excinfo.value)
    assert f"{path}, entry #2 (iss '{QUIET}')" in message and words in message, message


def test_check_config_lists_the_default_and_each_clients_policy(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_trusted_clients(tmp_path / "clients.json", [
        {"iss": LIVE, "jwks": jwks(ec_key())},
        {"iss": QUIET, "jwks": jwks(ec_key()), "tenant": "ward-7", "policy": {"mode": "silent", "max_cards": 2}}])
    for name, value in {"NMS_CDS_AUTH": "jwt", "NMS_CDS_TRUSTED_CLIENTS": str(path),
                        "NMS_CDS_DATA_DIR": str(tmp_path / "var"), "NMS_CDS_POLICY_ALLOW_CRITICAL": "false"}.items():
        monkeypatch.setenv(name, value)
    report = config_report.collect()
    assert report["problems"] == []
    text = "\n".join(config_report.table(report))
    assert "client policies:" in text
    assert (f"  {LIVE}: the default" in text and "  default: live; hooks patient-view, order-select, order-sign; "
            "indicators info, warning, critical; at most 10 card(s); critical sent as warning" in text)
    assert f"  {QUIET} (tenant ward-7): silent; " in text and "at most 2 card(s)" in text and "[own policy]" in text


def test_policy_settings_read_comma_separated_lists_and_refuse_unknown_values() -> None:
    settings = load_settings(auth="off", policy_hooks="order-sign, Patient-View", policy_indicators="critical")
    assert settings.policy_hooks == ["order-sign", "patient-view"] and settings.policy_indicators == ["critical"]
    with pytest.raises(ConfigError) as excinfo:
        load_settings(auth="off", policy_hooks="medication-prescribe")
    assert "NMS_CDS_POLICY_HOOKS" in str(excinfo.value)
    with pytest.raises(ConfigError):
        load_settings(auth="off", policy_max_cards=0)


# --- per-request options: quieter only --------------------------------------------------------------------------

def test_request_options_make_the_answer_quieter() -> None:
    with app_for(make_settings(fixed_now=fixtures.ANCHOR)) as app:
        assert indicators(call(app, "order-sign")) == ["critical"]
        assert indicators(call(app, "order-sign", options={"allow-critical": False})) == ["warning"]
        assert indicators(call(app, "order-sign", options={"silent": True})) == []
        assert indicators(call(app, "order-sign", options={"max-cards": 1, "info-cards": False})) == ["critical"]
        assert indicators(call(app, "order-sign", options={"unknown-code": 5})) == ["critical"]  # ignored
        with_warning = call(app, "order-sign", options={"allow-critical": False}).get_json()["cards"][0]
        plain = call(app, "order-sign").get_json()["cards"][0]
        assert {**with_warning, "indicator": "critical"} == plain  # the same card otherwise


def test_request_options_never_make_the_answer_louder() -> None:
    settings = make_settings(fixed_now=fixtures.ANCHOR, policy_allow_critical=False, policy_silent=False,
                             policy_max_cards=1, policy_indicators=["warning", "critical"])
    with app_for(settings) as app:
        loud = {"allow-critical": True, "silent": False, "max-cards": 10, "info-cards": True}
        assert indicators(call(app, "order-sign", options=loud)) == ["warning"]
    with app_for(make_settings(fixed_now=fixtures.ANCHOR, policy_silent=True)) as app:
        assert indicators(call(app, "order-sign", options={"silent": False})) == []
    with app_for(make_settings(fixed_now=fixtures.ANCHOR, policy_hooks=["order-sign"])) as app:
        assert indicators(call(app, "patient-view")) == []
        assert [s["hook"] for s in app.test_client().get("/cds-services").get_json()["services"]] == ["order-sign"]


@pytest.mark.parametrize(("extension", "field"), [
    ({REQUEST_EXTENSION: {"silent": "yes"}}, f"extension.{REQUEST_EXTENSION}.silent"),
    ({REQUEST_EXTENSION: {"max-cards": 0}}, f"extension.{REQUEST_EXTENSION}.max-cards"),
    ({REQUEST_EXTENSION: {"max-cards": True}}, f"extension.{REQUEST_EXTENSION}.max-cards"),
    ({REQUEST_EXTENSION: {"allow-critical": 0}}, f"extension.{REQUEST_EXTENSION}.allow-critical"),
    ({REQUEST_EXTENSION: ["silent"]}, f"extension.{REQUEST_EXTENSION}"),
    ("silent", "extension"),
])
def test_a_mistyped_option_is_400_naming_it(extension: Any, field: str) -> None:
    with app_for(make_settings(fixed_now=fixtures.ANCHOR)) as app:
        body = {**SCENARIOS["classic-nms"].request_for("order-sign"), "extension": extension}
        response = app.test_client().post("/cds-services/nms-order-sign", json=body)
        assert response.status_code == 400
        assert issue(response.get_json())["field"] == field


def test_apply_downgrades_then_filters_then_caps() -> None:
    cards = [{"uuid": "a", "indicator": "critical"}, {"uuid": "b", "indicator": "info"},
             {"uuid": "c", "indicator": "warning"}]
    policy = ClientPolicy()
    assert client_options.apply(policy, cards) == cards
    assert client_options.apply(policy.model_copy(update={"max_cards": 2}), cards) == cards[:2]
    no_critical = policy.model_copy(update={"allow_critical": False, "indicators": ("warning",)})
    assert client_options.apply(no_critical, cards) == [{"uuid": "a", "indicator": "warning"}, cards[2]]
    assert client_options.narrowed(policy, {"extension": {REQUEST_EXTENSION: {"info-cards": False}}}).indicators == (
        "warning", "critical")


# --- discovery and cards: CDS Hooks 3.0 readiness ------------------------------------------------------------

def test_discovery_states_the_version_and_each_services_options_in_the_crd_form() -> None:
    with app_for(make_settings()) as app:
        body = app.test_client().get("/cds-services").get_json()
    assert body["version"] == "3.0"
    for service in body["services"]:
        options = service["extension"][OPTIONS_EXTENSION]
        assert [o["code"] for o in options] == ["silent", "max-cards", "allow-critical", "info-cards"]
        for option in options:
            assert set(option) == {"code", "type", "name", "description", "default"}
            assert re.fullmatch(r"[a-z][a-z-]*", option["code"]) and option["name"] and option["description"]
            kind = {"boolean": bool, "integer": int}[option["type"]]
            assert type(option["default"]) is kind


def test_every_card_names_its_topic() -> None:
    with app_for(make_settings(fixed_now=fixtures.ANCHOR)) as app:
        for hook in fixtures.HOOKS:
            for card in call(app, hook).get_json()["cards"]:
                assert card["source"]["topic"] == {"system": "http://snomed.info/sct", "code": "15244003"}


def test_silent_cards_are_counted_apart() -> None:
    def count(app: Flask, name: str) -> float:
        text = app.test_client().get("/metrics").get_data(as_text=True)
        pattern = rf'^{name}{{hook="order-sign",indicator="critical",service="nms-order-sign"}} ([0-9.e+]+)$'
        found = re.search(pattern, text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    with app_for(make_settings(fixed_now=fixtures.ANCHOR, policy_silent=True)) as app:
        silent, shown = count(app, "nms_cds_silent_cards_total"), count(app, "nms_cds_cards_total")
        assert call(app, "order-sign").get_json() == {"cards": []}
        assert count(app, "nms_cds_silent_cards_total") == silent + 1
        assert count(app, "nms_cds_cards_total") == shown
