"""The census's answer to a busy FHIR server: ``Retry-After`` on 429 or 503 defers the next pass (unit level)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
import requests
import responses

from cds_service.devtools import fixtures
from cds_service.fhir.paging import PageLimits, ServerBusy
from cds_service.runtime import Runtime
from cds_service.watch import census
from cds_service.watch.runner import Watcher
from tests.conftest import make_settings

BASE = "https://fhir.example.org/r4"
LIMITS = PageLimits(connect_timeout=1.0, read_timeout=2.0, max_pages=3)


@responses.activate
@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_in_seconds_defers(status: int) -> None:
    responses.get(re.compile(re.escape(BASE) + r"/MedicationRequest.*"), status=status,
                  headers={"Retry-After": "30"})
    with requests.Session() as session, pytest.raises(ServerBusy) as busy:
        census.find(BASE, session, LIMITS, now=fixtures.ANCHOR)
    assert busy.value.retry_after == 30.0
    assert len(responses.calls) == 1  # nothing more is asked of a busy server in this pass


@responses.activate
def test_retry_after_as_a_date_and_capped() -> None:
    later = datetime.now(UTC) + timedelta(seconds=120)
    responses.get(re.compile(re.escape(BASE) + r"/MedicationRequest.*"), status=503,
                  headers={"Retry-After": format_datetime(later, usegmt=True)})
    with requests.Session() as session, pytest.raises(ServerBusy) as busy:
        census.find(BASE, session, LIMITS, now=fixtures.ANCHOR)
    assert 100 <= busy.value.retry_after <= 121
    responses.replace(responses.GET, re.compile(re.escape(BASE) + r"/MedicationRequest.*"), status=429,
                      headers={"Retry-After": "86400"})
    with requests.Session() as session, pytest.raises(ServerBusy) as capped:
        census.find(BASE, session, LIMITS, now=fixtures.ANCHOR)
    assert capped.value.retry_after == 3600.0


@responses.activate
def test_a_503_without_retry_after_is_an_error_of_the_pass(tmp_path: Path) -> None:
    responses.get(re.compile(re.escape(BASE) + r"/MedicationRequest.*"), status=503)
    settings = make_settings(fixed_now=fixtures.ANCHOR, fhir_allowlist=[BASE], data_dir=tmp_path,
                             watch_fhir_server=BASE)
    with Runtime.build(settings) as runtime, requests.Session() as session:
        result = Watcher(runtime, session).run_pass()
    assert (result.fhir_errors, result.retry_after, result.evaluated) == (1, 0.0, 0)


@responses.activate
def test_the_pass_reports_the_wait(tmp_path: Path) -> None:
    responses.get(re.compile(re.escape(BASE) + r"/MedicationRequest.*"), status=429, headers={"Retry-After": "45"})
    settings = make_settings(fixed_now=fixtures.ANCHOR, fhir_allowlist=[BASE], data_dir=tmp_path,
                             watch_fhir_server=BASE)
    with Runtime.build(settings) as runtime, requests.Session() as session:
        result = Watcher(runtime, session).run_pass()
    assert (result.fhir_errors, result.retry_after) == (1, 45.0)
