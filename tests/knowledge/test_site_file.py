"""The site knowledge file (NMS_CDS_SITE_FILE): a local CK code read as total CK, a stricter CK cut-off that
changes exactly the fixture verdicts it should, the bounds and unknown names refused, value-set edits, and the
defaults back without the file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from cds_service.clinical.valuesets import load, using
from cds_service.devtools import fixtures
from cds_service.services.templates import prefetch_templates
from tests.conftest import app_for, make_settings

SCENARIOS = {s.id: s for s in fixtures.load_scenarios()}
LOINC = "http://loinc.org"

KREATINKINASE = f'''
[[code_map]]
system = "{LOINC}"
code = "32673-6"
text = "Kreatinkinase"
concept = "creatine-kinase"
unit = "U/L"
display = "Kreatinkinase (total CK at this site)"
'''

CK_5_ULN = '''
[thresholds.ck]
uln_multiple = 5.0
'''


def _site(tmp_path: Path, text: str, name: str = "site.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def site_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Flask]:
    with app_for(make_settings(fixed_now=fixtures.ANCHOR, site_file=_site(tmp_path, request.param))) as app:
        yield app


def _cards(app: Flask, body: dict[str, Any], hook: str = "order-sign") -> list[dict[str, Any]]:
    response = app.test_client().post(f"/cds-services/nms-{hook}", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    cards: list[dict[str, Any]] = response.get_json()["cards"]
    return cards


def _request_with_site_templates(app: Flask, scenario: fixtures.Scenario) -> dict[str, Any]:
    """The scenario's request with its prefetch filled for the templates of the app's knowledge (a site code map
    adds its code to the lab search)."""
    with using(app.extensions["nms_cds"].knowledge.site):
        templates = prefetch_templates()
    return {**scenario.request,
            "prefetch": fixtures.fill_prefetch(scenario.resources, templates, scenario.patient_id)}


# --- the German hospital's CK code -----------------------------------------------------------------------


def test_without_a_site_file_the_local_ck_code_is_not_read(tmp_path: Path) -> None:
    scenario = SCENARIOS["site-local-ck-code"]
    with app_for(make_settings(fixed_now=fixtures.ANCHOR)) as app:
        (card,) = _cards(app, scenario.request)
    assert card["indicator"] == "warning"
    assert "24000" not in card["detail"].replace(",", "") and "24 000" not in card["detail"]
    orders = [s for s in card.get("suggestions", []) if s["label"].startswith("Order")]
    assert orders and "CK" in orders[0]["label"]  # the card asks for the CK that is on file under 32673-6
    assert card["source"]["label"].endswith("+default")


@pytest.mark.parametrize("site_app", [KREATINKINASE], indirect=True)
def test_a_site_map_reads_32673_6_kreatinkinase_as_total_ck(site_app: Flask) -> None:
    scenario = SCENARIOS["site-local-ck-code"]
    body = _request_with_site_templates(site_app, scenario)
    assert f"{LOINC}|32673-6" not in prefetch_templates()["labs"]  # the default search does not ask for it
    with using(site_app.extensions["nms_cds"].knowledge.site):
        assert f"{LOINC}|32673-6" in prefetch_templates()["labs"]  # the site's does
    assert any(e["resource"]["code"]["coding"][0]["code"] == "32673-6" for e in body["prefetch"]["labs"]["entry"])
    (card,) = _cards(site_app, body)
    assert card["indicator"] == "critical"
    detail = card["detail"].replace(",", "").replace("\u202f", "").replace(" ", "")
    assert "24000" in detail
    assert not any(s["label"].startswith("Order") and "CK" in s["label"] for s in card.get("suggestions", []))
    version = site_app.extensions["nms_cds"].knowledge.version
    assert "+site." in version and card["source"]["label"].endswith(version)
    # every hook reads it
    for hook in ("patient-view", "order-select"):
        hooked = fixtures.request_for_hook(body, hook)
        assert [c["indicator"] for c in _cards(site_app, hooked, hook)] == ["critical"]


@pytest.mark.parametrize("site_app", [KREATINKINASE.replace('"Kreatinkinase"', '"CK gesamt"')], indirect=True)
def test_a_code_map_with_another_text_leaves_the_record_alone(site_app: Flask) -> None:
    """The text guard: 32673-6 is read as total CK only where the record's text says what the site file says."""
    (card,) = _cards(site_app, _request_with_site_templates(site_app, SCENARIOS["site-local-ck-code"]))
    assert card["indicator"] == "warning"


def test_the_process_reads_the_file_once_and_defaults_come_back_without_it(tmp_path: Path) -> None:
    path = _site(tmp_path, KREATINKINASE + CK_5_ULN)
    scenario = SCENARIOS["site-local-ck-code"]
    with app_for(make_settings(fixed_now=fixtures.ANCHOR, site_file=path)) as app:
        body = _request_with_site_templates(app, scenario)
        path.unlink()  # read at start: the running service no longer needs it
        assert [c["indicator"] for c in _cards(app, body)] == ["critical"]
        assert [c["indicator"] for c in _cards(app, body)] == ["critical"]
    assert load().thresholds["ck"]["uln_multiple"] == 4.0  # nothing leaks out of the requests
    with app_for(make_settings(fixed_now=fixtures.ANCHOR)) as app:
        assert [c["indicator"] for c in _cards(app, body)] == ["warning"]
        assert [c["indicator"] for c in _cards(app, scenario.request)] == ["warning"]


# --- CK >= 5 x ULN: exactly these fixture verdicts change ---------------------------------------------------

# Reviewed: the three scenarios whose CK finding lies between 4 and 5 x ULN; every other CK finding of the library
# is >= 5 x ULN (classic NMS and its variants) or below 4 x ULN, and stays as it was. At 5 x ULN their CK no
# longer counts:
# - boundary-exact-thresholds: CK exactly 4 x ULN, afebrile (exposure + CK + hypermetabolism): the warning built
#   on CK goes; hypermetabolism alone gives no card;
# - contained-medication: CK 4.5 x ULN with fever 38.4/38.9 after risperidone: critical falls to warning
#   (exposure + hyperthermia, CK no longer 'met');
# - mimic-im-ck-afebrile: CK 4.5 x ULN after an IM injection without fever: the warning goes.
CHANGED_AT_5_ULN: dict[str, dict[str, tuple[str | None, str | None]]] = {
    "boundary-exact-thresholds": {hook: ("warning", None) for hook in fixtures.HOOKS},
    "contained-medication": {hook: ("critical", "warning") for hook in fixtures.HOOKS},
    "mimic-im-ck-afebrile": {hook: ("warning", None) for hook in fixtures.HOOKS},
}


def _verdicts(app: Flask) -> dict[str, dict[str, str | None]]:
    out: dict[str, dict[str, str | None]] = {}
    for sid, scenario in sorted(SCENARIOS.items()):
        out[sid] = {}
        for hook in fixtures.HOOKS:
            cards = _cards(app, scenario.request_for(hook), hook)
            out[sid][hook] = cards[0]["indicator"] if cards else None
    return out


def test_ck_at_5_x_uln_changes_exactly_the_expected_fixture_verdicts(tmp_path: Path) -> None:
    with app_for(make_settings(fixed_now=fixtures.ANCHOR)) as app:
        before = _verdicts(app)
    with app_for(make_settings(fixed_now=fixtures.ANCHOR, site_file=_site(tmp_path, CK_5_ULN))) as app:
        after = _verdicts(app)
    changed = {sid: {hook: (before[sid][hook], after[sid][hook]) for hook in before[sid]
                     if before[sid][hook] != after[sid][hook]}
               for sid in before if before[sid] != after[sid]}
    assert changed == CHANGED_AT_5_ULN
