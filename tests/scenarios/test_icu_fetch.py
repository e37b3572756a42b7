"""An ICU record (vital signs every 15 minutes, about 3,900 Observations) without prefetch, on the local FHIR
server paging like HAPI with 250-500 ms a page (bench scenario 5).

Each hook gives the prefetch verdict (critical), or a card that says which data it could not read; never a
412, never a silent warning. The dense window's later pages are read concurrently (offset pages of the
server's kept result set: cds_service/fhir/prefetch.py), within ``fhir_max_pages``; the card names what the
page cap left out.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from bench import scenarios
from cds_service.app import create_app
from cds_service.devtools import localfhir
from cds_service.devtools.fixtures import ANCHOR, HOOKS, fill_prefetch
from cds_service.services.templates import prefetch_templates
from tests.conftest import make_settings, require_local_fhir

pytestmark = pytest.mark.integration

# 250 ms before every answer, 250 ms more for a new search: 500 ms a search, 250 ms a later page
PAGE_LATENCY = ("--paging", "hapi", "--latency-ms", "250", "--search-latency-ms", "250")
# As in tests/scenarios/test_long_stay_fetch.py: the local server is one Node thread, and on a busy machine its
# first byte can come after the default 2 s read timeout with budget left; the read timeout is raised to the hook
# budget.
SETTINGS = {"fixed_now": ANCHOR, "fhir_read_timeout": 3.0}
AUTH = {"access_token": "tok-icu-1", "token_type": "Bearer", "expires_in": 300, "scope": "user/*.read",
        "subject": "nms-cds"}

require_local_fhir()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[localfhir.LocalFhirServer]:
    data = tmp_path_factory.mktemp("icu")
    (data / "icu").mkdir()
    (data / "icu" / "bundle.json").write_bytes(scenarios.dumps(scenarios.icu_bundle()))
    with localfhir.LocalFhirServer(load=[data], port=0, extra_args=PAGE_LATENCY) as srv:
        yield srv


@pytest.fixture(scope="module")
def app(server: localfhir.LocalFhirServer) -> Iterator[Flask]:
    application = create_app(make_settings(**SETTINGS, fhir_allowlist=[server.base_url]))
    application.test_client().post("/cds-services/nms-order-sign",  # warm the server's search code
                                   json=scenarios.icu_request(server.base_url, "order-sign"))
    time.sleep(2.0)  # and let it finish what the warm-up call left when its budget ran out (one Node thread)
    yield application
    application.extensions["nms_cds"].pool.shutdown()


def _post(app: Flask, body: dict[str, Any]) -> tuple[int, list[dict[str, Any]], float]:
    started = time.monotonic()
    response = app.test_client().post(f"/cds-services/nms-{body['hook']}", json=body)
    elapsed = time.monotonic() - started
    cards: list[dict[str, Any]] = response.get_json().get("cards", []) if response.status_code == 200 else []
    return response.status_code, cards, elapsed


def test_the_record_is_dense() -> None:
    resources = scenarios.icu_resources()
    assert 3800 <= sum(r["resourceType"] == "Observation" for r in resources) <= 4000


@pytest.mark.parametrize("hook", HOOKS)
def test_each_hook_keeps_the_prefetch_verdict_or_names_what_is_missing(app: Flask, server: localfhir.LocalFhirServer,
                                                                         hook: str) -> None:
    prefetch = fill_prefetch(scenarios.icu_resources(), prefetch_templates(), scenarios.PATIENT_ID)
    status, prefetched, _ = _post(app, scenarios.icu_request(None, hook, prefetch=prefetch))
    assert status == 200 and [c["indicator"] for c in prefetched] == ["critical"]

    body = scenarios.icu_request(server.base_url, hook)
    body["fhirAuthorization"] = AUTH
    status, cards, elapsed = _post(app, body)
    assert status == 200  # never a 412: every key has at least its newest page
    (card,) = cards
    assert card["indicator"] == "critical" or "**Incomplete:**" in card["detail"], card["summary"]
    assert elapsed < 3.0 + 2.0  # the hook budget (3 s) and building the card from 3,900 readings, on a busy machine
    # the page cap (10 pages of 200) leaves the oldest vital signs out, and the card says so
    incomplete = next(line for line in card["detail"].split("\n") if line.startswith("**Incomplete:**"))
    assert "vital signs" in incomplete  # "(only partly: the oldest 880 of 2,880 readings not read: page cap)"
