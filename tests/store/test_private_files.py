"""Files only the service can read, the patient-hash key apart from the database, and the refusals at start:
a key file other accounts can read, a Redis that may evict replay entries, a SQLite file that vanished."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cds_service.app import create_app
from cds_service.errors import ConfigError, StoreUnavailable
from cds_service.serve.gunicorn import _store_ready
from cds_service.store import open_store
from cds_service.store.keys import KEY_FILENAME, audit_key
from cds_service.store.redis_replay import RedisReplayGuard
from cds_service.store.sqlite import FILENAME, VANISHED
from tests.conftest import app_for, make_settings
from tests.helpers.dbservers import PostgresServer, RedisServer, postgres, redis_server  # noqa: F401
from tests.store.test_store import _feedback_body, feedback_item

URL = "/cds-services/nms-order-sign"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_store_files_and_key_are_0600_in_a_0700_directory_with_umask_022(tmp_path: Path, umask_022: None) -> None:
    data = tmp_path / "fresh" / "data"
    settings = make_settings(data_dir=data)
    with app_for(settings) as app:
        store = app.extensions["nms_cds"].store
        store.add_feedback([feedback_item()])  # the WAL and shared-memory files exist while it is open
        files = sorted(p.name for p in data.iterdir())
        # the database, its WAL and shared memory, its set-up lock file, the hash key
        assert files == sorted([FILENAME, FILENAME + "-wal", FILENAME + "-shm", FILENAME + ".lock", KEY_FILENAME])
        assert mode(data) == 0o700
        assert {name: mode(data / name) for name in files} == {name: 0o600 for name in files}


def test_files_of_an_earlier_version_are_made_private(tmp_path: Path, umask_022: None) -> None:
    data = tmp_path / "data"
    open_store(make_settings(data_dir=data)).close()
    os.chmod(data / FILENAME, 0o644)
    open_store(make_settings(data_dir=data)).close()
    assert mode(data / FILENAME) == 0o600


def test_a_copied_database_alone_does_not_hold_the_key(tmp_path: Path) -> None:
    settings = make_settings(data_dir=tmp_path / "data")
    with app_for(settings) as app:
        key = app.extensions["nms_cds"].hash_key
    assert key == bytes.fromhex((tmp_path / "data" / KEY_FILENAME).read_text().strip())
    database = (tmp_path / "data" / FILENAME).read_bytes()
    assert key.hex().encode() not in database and key not in database
    with sqlite3.connect(tmp_path / "data" / FILENAME) as conn:
        assert conn.execute("SELECT count(*) FROM store_meta").fetchone() == (0,)
    conn.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_key_kept_in_the_database_by_an_earlier_version_is_moved_out_once(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    overrides: dict[str, Any] = {"data_dir": tmp_path / "data"}
    if backend == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres")
        overrides["database_url"] = server.new_database()
    settings = make_settings(**overrides)
    legacy = "ab" * 32
    store = open_store(settings)
    try:
        store._run(lambda cur: cur.x(  # type: ignore[attr-defined]
            "INSERT INTO store_meta (name, value) VALUES ('patient_hash_key', ?)", (legacy,)))
        assert audit_key(settings, store) == bytes.fromhex(legacy)  # hashes of old audit rows still match
        assert store.legacy_hash_key() is None
        assert (tmp_path / "data" / KEY_FILENAME).read_text().strip() == legacy
        assert mode(tmp_path / "data" / KEY_FILENAME) == 0o600
        assert audit_key(settings, store) == bytes.fromhex(legacy)
    finally:
        store.close()


@pytest.mark.parametrize("bits", [0o640, 0o604, 0o644])
def test_a_key_file_other_accounts_can_read_refuses_to_start(tmp_path: Path, bits: int,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "audit.key"
    key_file.write_text("cd" * 32)
    os.chmod(key_file, bits)
    settings = make_settings(data_dir=tmp_path / "data", audit_hash_key_file=key_file)
    with pytest.raises(ConfigError, match=r"readable by other accounts .*chmod 600"):
        create_app(settings)
    assert _store_ready(settings) is False
    assert "refusing to start: audit hash key file" in capsys.readouterr().err
    os.chmod(key_file, 0o400)
    with app_for(settings) as app:
        assert app.extensions["nms_cds"].hash_key == bytes.fromhex("cd" * 32)


# --- a SQLite file deleted or replaced while serving ---------------------------------------------------------


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_vanished_sqlite_file_stops_acknowledging_writes(tmp_path: Path, how: str) -> None:
    data = tmp_path / "data"
    with app_for(make_settings(data_dir=data)) as app:
        client = app.test_client()
        assert client.post(URL + "/feedback", json=_feedback_body("card-1")).status_code == 200
        for suffix in ("", "-wal", "-shm"):
            (data / (FILENAME + suffix)).unlink(missing_ok=True)
        if how == "replaced":
            open_store(make_settings(data_dir=data)).close()  # a new, empty database at the same path
        refused = client.post(URL + "/feedback", json=_feedback_body("card-2"))
        assert refused.status_code == 503 and refused.headers["Retry-After"]
        assert VANISHED in refused.get_json()["issue"][0]["diagnostics"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and VANISHED in " ".join(
            i["diagnostics"] for i in ready.get_json()["issue"])
        with pytest.raises(StoreUnavailable):
            app.extensions["nms_cds"].store.report_rows(0)


# --- Redis eviction policy -------------------------------------------------------------------------------------


@pytest.fixture
def redis_policy(redis_server: RedisServer) -> Iterator[Any]:  # noqa: F811
    import redis

    admin = redis.Redis.from_url(redis_server.url)
    yield admin
    admin.config_set("maxmemory-policy", "noeviction")
    admin.acl_deluser("limited")
    admin.close()


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-random", "volatile-lru", "volatile-ttl"])
def test_a_redis_that_may_evict_replay_entries_refuses_to_start(
        redis_policy: Any, redis_server: RedisServer, policy: str, tmp_path: Path,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    redis_policy.config_set("maxmemory-policy", policy)
    guard = RedisReplayGuard(redis_server.url)
    try:
        problem = guard.eviction_problem()
    finally:
        guard.close()
    assert problem is not None and policy in problem and "noeviction" in problem
    settings = make_settings(data_dir=tmp_path / "data", redis_url=redis_server.url)
    assert _store_ready(settings) is False
    assert f"refusing to start: Redis maxmemory-policy is {policy}" in capsys.readouterr().err
    redis_policy.config_set("maxmemory-policy", "noeviction")
    assert _store_ready(settings) is True


def test_a_redis_that_refuses_config_get_needs_the_operators_word(
        redis_policy: Any, redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    redis_policy.acl_setuser("limited", enabled=True, passwords=["+limited-pw"], keys=["*"],
                             commands=["+@all", "-config"])
    url = redis_server.url.replace("redis://", "redis://limited:limited-pw@")
    guard = RedisReplayGuard(url)
    try:
        problem = guard.eviction_problem()
        assert problem is not None and "CONFIG GET" in problem and "NMS_CDS_REDIS_EVICTION_CHECKED" in problem
        assert guard.eviction_problem(checked=True) is None
        guard.ping()  # the guard itself works with that user
    finally:
        guard.close()
    assert _store_ready(make_settings(data_dir=tmp_path / "d1", redis_url=url)) is False
    assert _store_ready(make_settings(data_dir=tmp_path / "d2", redis_url=url, redis_eviction_checked=True))
