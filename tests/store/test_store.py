"""The store: every test runs against the embedded SQLite file and a real PostgreSQL server.

PostgreSQL is started by the test suite (``tests/helpers/dbservers.py``); under ``CI=true`` a server that
cannot start fails these tests.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from cds_service.app import create_app
from cds_service.config import Settings
from cds_service.errors import StoreUnavailable
from cds_service.store import FeedbackRecord, Store, open_store
from cds_service.store.base import CardRecord
from cds_service.store.keys import audit_key
from cds_service.store.migrations import LATEST
from cds_service.store.sql import SqlStore
from cds_service.store.sqlite import FILENAME
from tests.conftest import make_settings
from tests.helpers.dbservers import PostgresServer, postgres  # noqa: F401  (session fixture)
from tests.helpers.outcome import issue
from tests.protocol.test_openapi import assert_documented
from tests.protocol.test_protocol import febrile_prefetch, hook_request

URL = "/cds-services/nms-order-sign"
BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_settings(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a fresh store of the backend under test; every call shares that store."""
    overrides: dict[str, Any] = {"data_dir": tmp_path / "data"}
    if backend == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres")
        overrides["database_url"] = server.new_database()

    def build(**more: Any) -> Settings:
        return make_settings(**{**overrides, **more})

    return build


@pytest.fixture
def store(store_settings: Callable[..., Settings]) -> Iterator[Store]:
    opened = open_store(store_settings())
    yield opened
    opened.close()


@pytest.fixture
def make_app(store_settings: Callable[..., Settings]) -> Iterator[Callable[..., Flask]]:
    apps: list[Flask] = []

    def build(**overrides: Any) -> Flask:
        app = create_app(store_settings(**overrides))
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["nms_cds"].close()


def feedback_item(card: str = "card-1", outcome: str = "overridden", ts: str = "2026-11-24T12:00:00Z",
                  code: str | None = "already-managed") -> FeedbackRecord:
    return FeedbackRecord("nms-order-sign", card, outcome, ts, received_at=1000.0, override_code=code,
                          override_system="https://github.com/nms-cds/nms-cds/override-reason")


# --- schema -------------------------------------------------------------------------------------------------


def test_migrations_apply_once_even_when_workers_start_together(store_settings: Callable[..., Settings]) -> None:
    settings = store_settings()
    opened: list[Store] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def start() -> None:
        barrier.wait()
        try:
            opened.append(open_store(settings))
        except BaseException as exc:  # pragma: no cover - the assertion below shows it
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(len(s.migrated) for s in opened) == [0] * 5 + [LATEST]  # type: ignore[attr-defined]
    first = opened[0]
    assert isinstance(first, SqlStore) and first.schema_version() == LATEST
    assert len({audit_key(settings, s) for s in opened}) == 1  # one patient-hash key shared by every worker
    for s in opened:
        s.close()


# --- feedback -----------------------------------------------------------------------------------------------


def test_feedback_is_stored_once_across_workers_and_replicas(store_settings: Callable[..., Settings]) -> None:
    """Two store objects on one database stand for two workers (or replicas): 'new' is decided once."""
    worker_a, worker_b = open_store(store_settings()), open_store(store_settings())
    assert worker_a.add_feedback([feedback_item()]) == 1
    assert worker_b.add_feedback([feedback_item()]) == 0
    assert worker_b.add_feedback([feedback_item(), feedback_item(outcome="accepted", code=None)]) == 1
    assert len(worker_a.report_rows(0).feedback) == 2
    worker_a.close()
    worker_b.close()


def test_concurrent_identical_feedback_is_new_exactly_once(store_settings: Callable[..., Settings]) -> None:
    stores = [open_store(store_settings()) for _ in range(4)]
    items = [feedback_item(card=f"card-{i}") for i in range(20)]
    counts: list[int] = []
    barrier = threading.Barrier(8)

    def send(s: Store) -> None:
        barrier.wait()
        counts.append(s.add_feedback(items))

    threads = [threading.Thread(target=send, args=(stores[i % 4],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == 20 and len(stores[0].report_rows(0).feedback) == 20
    for s in stores:
        s.close()


# --- replay cache ---------------------------------------------------------------------------------------------


def test_replay_claims_are_shared_and_expire(store_settings: Callable[..., Settings]) -> None:
    a, b = open_store(store_settings()), open_store(store_settings())
    assert a.claim("iss-1", "jti-1", until=100, now=0) is None
    assert b.claim("iss-1", "jti-1", until=100, now=10) == "replay"  # the other worker sees it
    assert b.claim("iss-2", "jti-1", until=100, now=10) is None  # keyed by (iss, jti)
    assert a.claim("iss-1", "jti-1", until=300, now=101) is None  # expired entries are purged
    a.close()
    b.close()


def test_one_issuer_filling_its_share_never_locks_out_another(store_settings: Callable[..., Settings]) -> None:
    s = open_store(store_settings(replay_max_per_issuer=10))
    for i in range(10):
        assert s.claim("flooder", f"j{i}", until=1000, now=0) is None
    assert s.claim("flooder", "one-more", until=1000, now=1) == "full"
    assert s.claim("flooder", "j3", until=1000, now=1) == "replay"
    for i in range(10):
        assert s.claim("other-ehr", f"j{i}", until=1000, now=1) is None  # its own share
    assert s.claim("flooder", "after-expiry", until=3000, now=1001) is None  # expired ones made room
    assert isinstance(s, SqlStore) and s.replay_entries("flooder") == 1
    counts = s.purge(before=0, now=2000)
    assert counts["replay"] == 10 and s.replay_entries("other-ehr") == 0
    s.close()


def test_concurrent_claims_of_one_jti_admit_exactly_one(store_settings: Callable[..., Settings]) -> None:
    stores = [open_store(store_settings()) for _ in range(4)]
    results: list[str | None] = []
    barrier = threading.Barrier(12)

    def claim(s: Store) -> None:
        barrier.wait()
        results.append(s.claim("iss", "same", until=100, now=0))

    threads = [threading.Thread(target=claim, args=(stores[i % 4],)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(None) == 1 and results.count("replay") == 11
    for s in stores:
        s.close()


# --- audit and retention -----------------------------------------------------------------------------------------


def test_audit_rows_are_bounded_and_purged_after_retention(store: Store) -> None:
    old = CardRecord("u-old", 100.0, "order-sign", "nms-order-sign", "h-1", "critical", 40, ("ck",), ("r",),
                     ("Observation/o1",))
    huge = CardRecord("u-new" + "x" * 5000, 5000.0, "order-sign", "nms-order-sign", "h" * 5000, "warning", 20,
                      tuple(f"rule-{i}" for i in range(500)), (), tuple("Observation/" + "y" * 900 for _ in range(3)))
    store.record_cards([old, huge])
    store.record_cards([old])  # the same card again is kept once
    rows = store.report_rows(0).cards
    assert len(rows) == 2
    kept = rows[1]
    assert len(kept.card_uuid) == 256 and len(kept.hook_instance) == 256 and len(kept.rules) == 64
    assert all(len(e) <= 256 for e in kept.evidence)
    store.add_feedback([FeedbackRecord("nms-order-sign", "u-old", "accepted", "t", received_at=100.0)])
    counts = store.purge(before=1000.0, now=1000.0)
    assert counts["cards"] == 1 and counts["feedback"] == 1
    assert [c.card_uuid[:5] for c in store.report_rows(0).cards] == ["u-new"]


def test_every_card_served_is_audited_without_the_patient_id(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    body = hook_request(prefetch=febrile_prefetch())
    (card,) = app.test_client().post(URL, json=body).get_json()["cards"]
    rt = app.extensions["nms_cds"]
    (row,) = rt.store.report_rows(0).cards
    assert row.card_uuid == card["uuid"] and row.indicator == "critical" and row.hook == "order-sign"
    assert row.hook_instance == body["hookInstance"] and row.service_id == "nms-order-sign"
    assert row.score is not None and row.score > 0
    assert {"exposure", "hyperthermia", "ck"} <= set(row.rules)
    assert {"Observation/o2", "Observation/o3", "MedicationRequest/draft-1"} <= set(row.evidence)
    assert row.reasons and row.patient is not None and row.patient.startswith("hmac-sha256:")
    assert "p1" not in row.patient
    # the same patient hashes alike in another worker (the key file in the data directory is shared)
    other = make_app()
    other.test_client().post(URL, json=hook_request(prefetch=febrile_prefetch(), hookInstance="second"))
    assert len({c.patient for c in rt.store.report_rows(0).cards}) == 1


def test_patient_ids_are_stored_only_when_the_operator_opts_in(make_app: Callable[..., Flask]) -> None:
    app = make_app(audit_patient_ids=True)
    app.test_client().post(URL, json=hook_request(prefetch=febrile_prefetch()))
    assert [c.patient for c in app.extensions["nms_cds"].store.report_rows(0).cards] == ["p1"]


def test_a_request_without_cards_is_not_audited(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    body = hook_request()
    body["context"]["draftOrders"]["entry"][0]["resource"]["medicationCodeableConcept"]["coding"][0]["code"] = "1191"
    assert app.test_client().post(URL, json=body).get_json() == {"cards": []}
    assert app.extensions["nms_cds"].store.report_rows(0).cards == []


# --- feedback through HTTP: never lost -----------------------------------------------------------------------------


def _feedback_body(card: str) -> dict[str, Any]:
    return {"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-11-24T12:05:00Z",
                          "overrideReason": {"reason": {"system": "https://github.com/nms-cds/nms-cds/override-reason",
                                                        "code": "other-cause-identified"},
                                             "userComment": "free text is not kept"}}]}


def _assert_503_names_cause_without_secrets(response: Any, *words: str, secrets: tuple[str, ...]) -> None:
    assert response.status_code == 503
    body = response.get_json()
    assert issue(body)["code"] == "transient" and response.headers["Retry-After"]
    assert any(w in issue(body)["diagnostics"] for w in words), body
    for secret in secrets:
        assert secret not in response.get_data(as_text=True)


def test_feedback_to_a_locked_store_is_503_and_the_resend_is_stored_once(
        make_app: Callable[..., Flask], backend: str, postgres_lock: Callable[..., Any]) -> None:
    app = make_app(store_timeout_seconds=0.3)
    client = app.test_client()
    (card,) = client.post(URL, json=hook_request(prefetch=febrile_prefetch())).get_json()["cards"]
    release = postgres_lock(app)
    failed = client.post(URL + "/feedback", json=_feedback_body(card["uuid"]))
    settings = app.extensions["nms_cds"].settings
    secrets = (str(settings.data_dir), settings.database_url.get_secret_value() if settings.database_url else "\0")
    _assert_503_names_cause_without_secrets(failed, "locked", "timed out", secrets=secrets)
    assert_documented(client.get("/openapi.json").get_json(), "/cds-services/{service_id}/feedback", "post", failed)
    release()
    assert client.post(URL + "/feedback", json=_feedback_body(card["uuid"])).get_json() == {"received": 1, "new": 1}
    assert client.post(URL + "/feedback", json=_feedback_body(card["uuid"])).get_json() == {"received": 1, "new": 0}
    (stored,) = app.extensions["nms_cds"].store.report_rows(0).feedback
    assert stored.card_uuid == card["uuid"] and stored.override_code == "other-cause-identified"
    assert "userComment" not in repr(stored) and "free text" not in repr(stored)


@pytest.fixture
def postgres_lock(backend: str) -> Callable[..., Any]:
    """Hold the write lock (SQLite: the file's; PostgreSQL: the table's) from outside the service."""

    def lock(app: Flask, table: str = "feedback") -> Callable[[], None]:
        settings = app.extensions["nms_cds"].settings
        if backend == "sqlite":
            conn = sqlite3.connect(settings.data_dir / FILENAME, isolation_level=None)
            conn.execute("BEGIN EXCLUSIVE")

            def release_sqlite() -> None:
                conn.execute("ROLLBACK")
                conn.close()

            return release_sqlite
        import psycopg

        pg = psycopg.connect(settings.database_url.get_secret_value())
        pg.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")

        def release_pg() -> None:
            pg.rollback()
            pg.close()

        return release_pg

    return lock


def test_a_data_directory_that_does_not_exist_yet_loses_nothing(tmp_path: Path) -> None:
    """The measured failure: a feedback location whose directory did not exist got 500, then every retry
    '200 new 0' with nothing written. Now the store's directory is created at start-up."""
    data = tmp_path / "not" / "there" / "yet"
    app = create_app(make_settings(data_dir=data))
    client = app.test_client()
    assert client.post(URL + "/feedback", json=_feedback_body("card-x")).get_json() == {"received": 1, "new": 1}
    assert client.post(URL + "/feedback", json=_feedback_body("card-x")).get_json() == {"received": 1, "new": 0}
    app.extensions["nms_cds"].close()
    reopened = open_store(make_settings(data_dir=data))  # a restarted worker still has it
    assert [f.card_uuid for f in reopened.report_rows(0).feedback] == ["card-x"]
    reopened.close()


def test_a_data_directory_that_cannot_be_created_fails_at_start_naming_the_cause(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreUnavailable) as info:
        create_app(make_settings(data_dir=blocker / "data"))
    assert "data directory cannot be created" in info.value.cause and str(tmp_path) not in info.value.cause


def test_postgres_down_is_503_and_the_resend_after_restart_is_stored_once(
        postgres: PostgresServer, tmp_path: Path) -> None:  # noqa: F811
    url = postgres.new_database()
    app = create_app(make_settings(database_url=url, store_timeout_seconds=2))
    client = app.test_client()
    assert client.post(URL + "/feedback", json=_feedback_body("before")).get_json()["new"] == 1
    postgres.stop()
    try:
        failed = client.post(URL + "/feedback", json=_feedback_body("during"))
        _assert_503_names_cause_without_secrets(failed, "PostgreSQL", secrets=(url, "postgres@", "127.0.0.1"))
    finally:
        postgres.start()
    assert client.post(URL + "/feedback", json=_feedback_body("during")).get_json() == {"received": 1, "new": 1}
    assert client.post(URL + "/feedback", json=_feedback_body("during")).get_json() == {"received": 1, "new": 0}
    assert {f.card_uuid for f in app.extensions["nms_cds"].store.report_rows(0).feedback} == {"before", "during"}
    app.extensions["nms_cds"].close()


# --- feedback size limits (issue 14) -------------------------------------------------------------------------------


def test_feedback_item_and_request_size_limits_are_413_json(make_app: Callable[..., Flask]) -> None:
    app = make_app(feedback_max_items=5, feedback_max_item_bytes=1024)
    client = app.test_client()
    item = _feedback_body("c")["feedback"][0]
    many = client.post(URL + "/feedback", json={"feedback": [dict(item, card=f"c{i}") for i in range(6)]})
    assert many.status_code == 413 and issue(many.get_json())["field"] == "feedback"
    assert "at most 5" in issue(many.get_json())["diagnostics"]
    big = dict(item, overrideReason={"reason": {"code": "x" * 2000}})
    large = client.post(URL + "/feedback", json={"feedback": [item, big]})
    assert large.status_code == 413 and issue(large.get_json())["field"] == "feedback[1]"
    long_card = client.post(URL + "/feedback", json={"feedback": [dict(item, card="c" * 300)]})
    assert long_card.status_code == 400 and issue(long_card.get_json())["field"] == "feedback[0].card"
    assert app.extensions["nms_cds"].store.report_rows(0).feedback == []
    ok = client.post(URL + "/feedback", json={"feedback": [dict(item, card=f"c{i}") for i in range(5)]})
    assert ok.get_json() == {"received": 5, "new": 5}


# --- nms-cds report ----------------------------------------------------------------------------------------------


def test_report_counts_cards_rules_and_override_rates(make_app: Callable[..., Flask], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, backend: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from cds_service import cli

    app = make_app()
    client = app.test_client()
    uuids = []
    for i in range(3):
        (card,) = client.post(URL, json=hook_request(prefetch=febrile_prefetch(), hookInstance=f"h{i}")).get_json()[
            "cards"]
        uuids.append(card["uuid"])
    client.post(URL + "/feedback", json=_feedback_body(uuids[0]))
    client.post(URL + "/feedback", json={"feedback": [{"card": uuids[1], "outcome": "accepted",
                                                       "outcomeTimestamp": "2026-11-24T12:00:00Z",
                                                       "acceptedSuggestions": []}]})
    client.post(URL + "/feedback", json=_feedback_body("not-an-audited-card"))
    settings = app.extensions["nms_cds"].settings
    monkeypatch.setenv("NMS_CDS_DATA_DIR", str(settings.data_dir))
    if settings.database_url is not None:
        monkeypatch.setenv("NMS_CDS_DATABASE_URL", settings.database_url.get_secret_value())
    png = tmp_path / "chart.png"
    assert cli.main(["report", "--since", "30d", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "Cards served: 3" in out and "accepted: 1 (33.3 %)" in out and "overridden: 1 (33.3 %)" in out
    assert re.search(r"^critical\s+3\s+33\.3 %\s+33\.3 %\s+33\.3 %$", out, re.M)
    assert re.search(r"^hyperthermia\s+3\s", out, re.M) and re.search(r"^order-sign\s+3$", out, re.M)
    assert re.search(r"^other-cause-identified\s+2\s+100\.0 %$", out, re.M)
    assert "for cards not in this window's audit: 1" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["report", "--since", "soon"]) == 2
    assert cli.main(["purge"]) == 0 and "purged" in capsys.readouterr().out


def test_replay_check_with_the_store_locked_is_503_never_skipped(make_app: Callable[..., Flask], tmp_path: Path,
                                                                 postgres_lock: Callable[..., Any],
                                                                 backend: str) -> None:
    import time

    from tests.helpers.jwt_helpers import ec_key, jwks, make_token, write_trusted_clients

    clients = write_trusted_clients(tmp_path / "clients.json", [{"iss": "https://ehr.example.org",
                                                                  "jwks": jwks(ec_key())}])
    app = make_app(auth="jwt", trusted_clients=clients, store_timeout_seconds=0.3)
    client = app.test_client()
    audience = "http://127.0.0.1:8080/cds-services"

    def token() -> dict[str, str]:
        return {"Authorization": "Bearer " + make_token(ec_key(), iss="https://ehr.example.org", aud=audience,
                                                         now=time.time())}

    assert client.get("/cds-services", headers=token()).status_code == 200
    release = postgres_lock(app, "replay_issuer")
    locked = client.get("/cds-services", headers=token())
    release()
    assert locked.status_code == 503 and issue(locked.get_json())["code"] == "transient"
    again = token()
    assert client.get("/cds-services", headers=again).status_code == 200
    assert client.get("/cds-services", headers=again).status_code == 401  # and the replay check is back


def test_one_client_filling_the_replay_cache_does_not_lock_out_another_over_http(
        make_app: Callable[..., Flask], tmp_path: Path) -> None:
    """Issue 14's measurement: one client's unique tokens filled the single cache and every client got 401."""
    import time

    from tests.helpers.jwt_helpers import ec_key, jwks, make_token, write_trusted_clients

    flooder, other = "https://flooder.example.org", "https://ehr.example.org"
    clients = write_trusted_clients(tmp_path / "clients.json", [
        {"iss": flooder, "jwks": jwks(ec_key("flood"))}, {"iss": other, "jwks": jwks(ec_key())}])
    app = make_app(auth="jwt", trusted_clients=clients, replay_max_per_issuer=10)
    client = app.test_client()
    audience = "http://127.0.0.1:8080/cds-services"

    def get(key: Any, iss: str) -> int:
        token = make_token(key, iss=iss, aud=audience, now=time.time())
        return client.get("/cds-services", headers={"Authorization": f"Bearer {token}"}).status_code

    assert [get(ec_key("flood"), flooder) for _ in range(12)] == [200] * 10 + [401] * 2
    assert [get(ec_key(), other) for _ in range(5)] == [200] * 5


def test_serve_with_an_unusable_store_exits_1_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from cds_service import cli

    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("NMS_CDS_AUTH", "off")
    monkeypatch.setenv("NMS_CDS_DATA_DIR", str(tmp_path / "a-file" / "data"))
    assert cli.main(["serve", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nms-cds: store unavailable: the data directory cannot be created")
    assert str(tmp_path) not in err


def test_the_default_store_needs_no_set_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make run` with nothing configured: the SQLite file appears under ./var and feedback is stored."""
    for name in ("NMS_CDS_DATA_DIR", "NMS_CDS_DATABASE_URL", "NMS_CDS_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    app = create_app(Settings(auth="off", environment="development"))
    response = app.test_client().post(URL + "/feedback", json=_feedback_body("c1"))
    assert response.get_json() == {"received": 1, "new": 1}
    assert (tmp_path / "var" / FILENAME).is_file() and app.extensions["nms_cds"].store.backend == "sqlite"
    app.extensions["nms_cds"].close()
