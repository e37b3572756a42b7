"""A gunicorn worker killed with SIGKILL in the middle of feedback writes loses no acknowledged feedback.

``nms-cds serve --workers 2`` (SQLite file, then a real PostgreSQL); 6 client threads post unique
feedback while another thread SIGKILLs a worker every 0.4 s (gunicorn starts a new one). Every item
answered ``200 {"new": 1}`` must be in the store afterwards; requests cut off by the kill got no
answer, so the client would send them again (and a resend is stored once).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from cds_service.config import Settings
from cds_service.store import open_store
from tests.conftest import make_settings
from tests.helpers.dbservers import PostgresServer, postgres, start_service  # noqa: F401  (session fixture)

URL = "/cds-services/nms-order-sign/feedback"
SECONDS = 6.0
KILL_EVERY = 0.4


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_sigkilled_worker_loses_no_acknowledged_feedback(backend: str, tmp_path: Path,
                                                         request: pytest.FixtureRequest) -> None:
    env = {"NMS_CDS_AUTH": "off", "NMS_CDS_ENVIRONMENT": "development", "NMS_CDS_DATA_DIR": str(tmp_path / "data")}
    settings: Settings = make_settings(data_dir=tmp_path / "data")
    if backend == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.new_database()
        env["NMS_CDS_DATABASE_URL"] = url
        settings = make_settings(database_url=url)
    service = start_service(env, workers=2, log=tmp_path / "serve.log")
    acknowledged: list[str] = []
    unanswered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    kills: list[int] = []

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            card = str(uuid.uuid4())
            body = {"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-11-24T12:00:00Z",
                                  "overrideReason": {"reason": {"code": "already-managed"}}}]}
            try:
                response = session.post(service.base + URL, json=body, timeout=10)
            except requests.RequestException:
                with lock:
                    unanswered.append(card)
                session = requests.Session()
                continue
            if response.status_code == 200 and response.json() == {"received": 1, "new": 1}:
                with lock:
                    acknowledged.append(card)

    def killer() -> None:
        rng = random.Random(13)
        while not stop.wait(KILL_EVERY):
            pids = service.worker_pids()
            if pids:
                pid = rng.choice(pids)
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills.append(pid)
                except ProcessLookupError:
                    pass

    threads = [threading.Thread(target=client) for _ in range(6)] + [threading.Thread(target=killer)]
    try:
        for t in threads:
            t.start()
        time.sleep(SECONDS)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        service.stop()
    store = open_store(settings)
    stored = {f.card_uuid for f in store.report_rows(0).feedback}
    store.close()
    lost = [card for card in acknowledged if card not in stored]
    print(f"{backend}: {len(kills)} SIGKILLs, {len(acknowledged)} acknowledged, {len(unanswered)} cut off, "
          f"{len(stored)} stored, {len(lost)} acknowledged but lost")
    assert len(kills) >= 5 and len(acknowledged) >= 50
    assert lost == []
