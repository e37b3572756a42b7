"""The quiet period across processes (real ``nms-cds serve`` / gunicorn): an override sent to one worker or replica
silences the patient-view card on the others, because what a card was about and its feedback live in the shared
store (SQLite file, or PostgreSQL), never in a worker's memory.

- 2 gunicorn workers, one SQLite store: after the override, rounds of concurrent chart openings (each round
  occupies both workers, as in test_replay.py) all get no card; a worse record gets its card on every call.
- 2 replicas (one worker each) sharing the SQLite data directory: the override sent to replica A silences
  replica B (deterministic: B never saw the card's feedback request).
- 2 replicas x 2 workers sharing PostgreSQL: the same.
- Control: 2 replicas that share nothing; B still shows the card (the tests above are not vacuous).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from cds_service.devtools import fixtures
from tests.helpers.dbservers import PostgresServer, ServiceProcess, postgres, start_service  # noqa: F401
from tests.web.test_quiet_period import HIGHER_CK, SECOND_FEVER, request

SENDS = 11
PV = "/cds-services/nms-patient-view"


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    started: list[ServiceProcess] = []

    def run(name: str, *, data: str, workers: int = 1, **env: str) -> ServiceProcess:
        service = start_service({"NMS_CDS_AUTH": "off", "NMS_CDS_ENVIRONMENT": "production",
                                 "NMS_CDS_FIXED_NOW": fixtures.ANCHOR.isoformat(),
                                 "NMS_CDS_DATA_DIR": str(tmp_path / f"data-{data}"), **env},
                                workers=workers, log=tmp_path / f"{name}.log")
        started.append(service)
        return service

    yield run
    for service in started:
        service.stop()
    for service in started:
        errors = [line for line in service.log.read_text(errors="replace").splitlines() if '"level":"error"' in line]
        assert not errors, "\n".join(errors[:10])


def call(service: ServiceProcess, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = requests.post(service.base + PV, json=body, timeout=30, headers={"Connection": "close"})
    assert response.status_code == 200, response.text
    cards: list[dict[str, Any]] = response.json()["cards"]
    return cards


def override(service: ServiceProcess, card: dict[str, Any]) -> None:
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-24T12:01:00Z",
            "overrideReason": {"reason": card["overrideReasons"][0]}}
    response = requests.post(service.base + PV + "/feedback", json={"feedback": [item]}, timeout=30,
                             headers={"Connection": "close"})
    assert response.status_code == 200 and response.json() == {"received": 1, "new": 1}


def burst(targets: list[ServiceProcess], body: dict[str, Any]) -> list[int]:
    """SENDS concurrent chart openings, round-robin over targets; the number of cards in each answer."""
    counts: list[int] = []
    barrier = threading.Barrier(SENDS)

    def send(i: int) -> None:
        barrier.wait()
        counts.append(len(call(targets[i % len(targets)], body)))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(SENDS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts


def test_override_on_one_worker_silences_the_card_on_the_other(launch: Callable[..., ServiceProcess]) -> None:
    service = launch("two-workers", data="shared", workers=2)
    assert len(service.worker_pids()) >= 2
    before = burst([service], request())
    assert before == [1] * SENDS  # every worker shows the card before the feedback
    override(service, call(service, request())[0])
    for _ in range(3):  # several rounds: each round's concurrent calls occupy both workers
        assert burst([service], request()) == [0] * SENDS
    worse = request("patient-view", HIGHER_CK, SECOND_FEVER)
    assert burst([service], worse) == [1] * SENDS  # warning -> critical: shown by every worker


def test_override_on_one_replica_silences_the_other_sharing_sqlite(launch: Callable[..., ServiceProcess]) -> None:
    a = launch("replica-a", data="shared")
    b = launch("replica-b", data="shared")
    [card] = call(b, request())
    override(a, card)  # feedback to A, about the card B showed
    assert call(b, request()) == [] and call(a, request()) == []
    [higher] = call(b, request("patient-view", HIGHER_CK))  # a decisive finding: shown again
    assert higher["indicator"] == "warning" and higher["uuid"] != card["uuid"]


def test_override_silences_replicas_sharing_postgres(launch: Callable[..., ServiceProcess],
                                                    postgres: PostgresServer) -> None:  # noqa: F811
    url = postgres.new_database()
    key = "replicas-share-one-patient-hash-key-0123"  # the key lives apart from the database: one per deployment
    a = launch("pg-a", data="pg-a", workers=2, NMS_CDS_DATABASE_URL=url, NMS_CDS_AUDIT_HASH_KEY=key)
    b = launch("pg-b", data="pg-b", workers=2, NMS_CDS_DATABASE_URL=url, NMS_CDS_AUDIT_HASH_KEY=key)
    [card] = call(a, request())
    override(b, card)
    assert burst([a, b], request()) == [0] * SENDS
    assert burst([a, b], request("patient-view", SECOND_FEVER)) == [1] * SENDS


def test_control_replicas_that_share_nothing_keep_showing(launch: Callable[..., ServiceProcess]) -> None:
    a, b = launch("alone-a", data="a"), launch("alone-b", data="b")
    [card] = call(a, request())
    override(a, card)
    assert call(a, request()) == []
    assert call(b, request())[0]["uuid"] == card["uuid"]  # B's store never heard of the override
