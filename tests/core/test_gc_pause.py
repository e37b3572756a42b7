"""The cyclic collector is paused while requests run and resumes when none is (cds_service/watchdog.GcPause)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_service.watchdog import GcPause


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    (gc.enable if was else gc.disable)()  # as before the test, whatever the test left


def test_the_collector_is_off_while_requests_run_and_on_after_the_last() -> None:
    pause = GcPause()
    pause.enter()
    assert not gc.isenabled()
    pause.enter()  # a second, overlapping request (gthread)
    pause.exit()
    assert not gc.isenabled(), "one request is still running"
    pause.exit()
    assert gc.isenabled()


def test_a_collector_switched_off_by_the_program_stays_off() -> None:
    gc.disable()
    pause = GcPause()
    pause.enter()
    pause.exit()
    assert not gc.isenabled()


def test_overlapping_requests_still_get_a_collection_after_max_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    collections: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda *a: collections.append(1) or 0)
    pause = GcPause(max_seconds=0.0)
    pause.enter()
    pause.enter()
    pause.exit()  # the pause is older than max_seconds and another request runs: one full collection now
    assert collections == [1]
    assert not gc.isenabled()
    pause.exit()
    assert gc.isenabled()


def test_concurrent_requests_leave_the_collector_on() -> None:
    pause = GcPause()
    barrier = threading.Barrier(8)

    def request() -> None:
        for round_ in range(200):
            pause.enter()
            if round_ == 0:
                barrier.wait()  # all eight inside at once
            pause.exit()

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert gc.isenabled()


def test_every_request_resumes_the_collector_even_when_it_fails(app: Flask, client: FlaskClient) -> None:
    assert client.get("/cds-services").status_code in (200, 401)
    assert gc.isenabled()
    assert client.post("/cds-services/nms-order-sign", data=b"{not json",
                       headers={"Content-Type": "application/json"}).status_code in (400, 401)
    assert gc.isenabled()
    assert client.get("/no-such-route").status_code == 404
    assert gc.isenabled()
