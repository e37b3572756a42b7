"""The site code map through the real local FHIR server: without prefetch the service's own lab search asks for
the mapped code, and prefetch filled from the site's discovery templates gives the same critical card."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cds_service.devtools import fixtures, localfhir
from cds_service.devtools.tools import fill_prefetch_from_server, load_fixtures
from tests.conftest import app_for, make_settings, require_local_fhir
from tests.knowledge.test_site_file import KREATINKINASE

pytestmark = pytest.mark.integration

require_local_fhir()


@pytest.fixture(scope="module")
def server() -> Iterator[localfhir.LocalFhirServer]:
    with localfhir.LocalFhirServer(port=0) as srv:
        assert load_fixtures(srv.base_url, None, None, rebase=False) == 0
        yield srv


@pytest.mark.parametrize("mapped", [False, True])
def test_the_fhir_server_path_reads_the_mapped_code(server: localfhir.LocalFhirServer, tmp_path: Path,
                                                   mapped: bool) -> None:
    site = tmp_path / "site.toml"
    site.write_text(KREATINKINASE, encoding="utf-8")
    scenario = next(s for s in fixtures.load_scenarios() if s.id == "site-local-ck-code")
    settings = make_settings(fixed_now=fixtures.ANCHOR, fhir_allowlist=[server.base_url],
                             site_file=site if mapped else None)
    with app_for(settings) as app:
        client = app.test_client()
        request: dict[str, Any] = copy.deepcopy(scenario.request)
        request.pop("prefetch")
        request["fhirServer"] = server.base_url
        fetched = client.post("/cds-services/nms-order-sign", json=request).get_json()["cards"]
        discovery = client.get("/cds-services").get_json()["services"]
        templates = next(s["prefetch"] for s in discovery if s["id"] == "nms-order-sign")
        assert ("http://loinc.org|32673-6" in templates["labs"]) is mapped
        request["prefetch"] = fill_prefetch_from_server(templates, server.base_url, scenario.patient_id, None)
        prefetched = client.post("/cds-services/nms-order-sign", json=request).get_json()["cards"]
    expected = "critical" if mapped else "warning"
    assert [c["indicator"] for c in fetched] == [c["indicator"] for c in prefetched] == [expected]
    assert fetched[0]["summary"] == prefetched[0]["summary"]
