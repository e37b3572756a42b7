"""Every fixture scenario through each hook's service against the real local FHIR server, twice: once with
no prefetch (the service queries the server itself) and once with prefetch filled from the discovery
templates by querying the server, as an EHR does. Both modes must give the same cards, with the verdict
``expected.json`` states for the hook.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from cds_service.app import create_app
from cds_service.devtools import fixtures, localfhir
from cds_service.devtools.tools import fill_prefetch_from_server, load_fixtures
from tests.conftest import make_settings, require_local_fhir
from tests.helpers.cdshooks_check import response_problems

pytestmark = pytest.mark.integration

SCENARIOS = fixtures.load_scenarios()
URL = "/cds-services/nms-order-sign"


require_local_fhir()


@pytest.fixture(scope="module")
def server() -> Iterator[localfhir.LocalFhirServer]:
    with localfhir.LocalFhirServer(port=0) as srv:  # __enter__ starts it
        # load through our own CLI code path (transaction Bundles, PUT with fixed ids), at the fixtures' dates
        assert load_fixtures(srv.base_url, None, None, rebase=False) == 0
        yield srv


@pytest.fixture(scope="module")
def app(server: localfhir.LocalFhirServer) -> Iterator[Flask]:
    application = create_app(make_settings(fixed_now=fixtures.ANCHOR, fhir_allowlist=[server.base_url]))
    yield application
    application.extensions["nms_cds"].close()


def _cards(app: Flask, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = app.test_client().post(f"/cds-services/nms-{body['hook']}", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    answer = response.get_json()
    assert response_problems(answer) == []
    cards: list[dict[str, Any]] = answer["cards"]
    return cards


@pytest.mark.parametrize("hook", fixtures.HOOKS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_both_modes_give_the_expected_cards(app: Flask, server: localfhir.LocalFhirServer,
                                            scenario: fixtures.Scenario, hook: str) -> None:
    request = scenario.request_for(hook)
    without = copy.deepcopy(request)
    without.pop("prefetch")
    without["fhirServer"] = server.base_url
    fetched = _cards(app, without)

    templates = app.extensions["nms_cds"].services[f"nms-{hook}"].templates
    with_prefetch = copy.deepcopy(without)
    with_prefetch["prefetch"] = fill_prefetch_from_server(dict(templates), server.base_url, scenario.patient_id, None)
    assert set(with_prefetch["prefetch"]) == set(templates)
    prefetched = _cards(app, with_prefetch)

    assert json.dumps(fetched, sort_keys=True) == json.dumps(prefetched, sort_keys=True)
    expected = scenario.expected["hooks"][hook]
    assert [c["indicator"] for c in fetched] == ([expected] if expected else [])
    # the committed prefetch-only request (no fhirServer) reaches the same verdict; its wording may differ
    # where only the server has the data (a server-side Medication is then named by the reference display)
    offline = _cards(app, request)
    assert [(c["indicator"], c["summary"]) for c in offline] == [(c["indicator"], c["summary"]) for c in fetched]


def test_load_fixtures_is_idempotent(server: localfhir.LocalFhirServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert load_fixtures(server.base_url, None, None, rebase=False) == 0
    out = capsys.readouterr().out
    assert f"loaded {len(SCENARIOS)} scenarios: 0 created" in out


def test_load_fixtures_reports_the_servers_outcome(tmp_path: Path, server: localfhir.LocalFhirServer,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "scenarios" / "broken"
    shutil.copytree(fixtures.FIXTURES_ROOT / "scenarios" / "classic-nms", broken)
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": {"resourceType": "Observation", "status": "not-a-status"},
                         "request": {"method": "PUT", "url": "Observation/x"}}]}
    (broken / "bundle.json").write_text(json.dumps(bundle))
    assert load_fixtures(server.base_url, None, tmp_path, rebase=False) == 1
    assert "FHIR server answered 4" in capsys.readouterr().err
