"""A replayed JWT gets 401 whichever worker or replica sees it (real gunicorn processes, real Redis).

Measured before the shared store: one token sent 11 times to the Docker image's 2 workers got
``{200: 2, 401: 9}``. Each test sends one token 11 times at once (so every worker is busy) and expects
exactly one 200. The control test shows the check is sensitive: two replicas that share nothing let
the replay through.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from cds_service.store.redis_replay import RedisReplayGuard
from tests.helpers.dbservers import (  # noqa: F401  (session fixtures)
    PostgresServer,
    RedisServer,
    ServiceProcess,
    postgres,
    redis_server,
    start_service,
)
from tests.helpers.jwt_helpers import ec_key, jwks, make_token, write_trusted_clients
from tests.protocol.test_protocol import febrile_prefetch, hook_request

ISS = "https://ehr.example.org"
SENDS = 11


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    clients = write_trusted_clients(tmp_path / "clients.json", [{"iss": ISS, "jwks": jwks(ec_key())}])
    started: list[ServiceProcess] = []

    def run(name: str, *, workers: int = 1, **env: str) -> ServiceProcess:
        data = tmp_path / f"data-{name}"
        service = start_service({"NMS_CDS_AUTH": "jwt", "NMS_CDS_TRUSTED_CLIENTS": str(clients),
                                 "NMS_CDS_DATA_DIR": str(data), "NMS_CDS_ENVIRONMENT": "production", **env},
                                workers=workers, log=tmp_path / f"{name}.log")
        started.append(service)
        return service

    yield run
    for service in started:
        service.stop()


def send_replays(targets: list[ServiceProcess], *, same_path: str = "/cds-services/nms-order-sign") -> Counter[int]:
    """One token (audience: the shared public URL) sent SENDS times at once, round-robin over targets."""
    audience = targets[0].base + same_path
    token = make_token(ec_key(), iss=ISS, aud=[t.base + same_path for t in targets], now=time.time())
    body = hook_request(prefetch=febrile_prefetch())
    statuses: list[int] = []
    barrier = threading.Barrier(SENDS)

    def send(i: int) -> None:
        target = targets[i % len(targets)]
        barrier.wait()
        response = requests.post(target.base + same_path, json=body, timeout=30,
                                 headers={"Authorization": f"Bearer {token}", "Connection": "close"})
        statuses.append(response.status_code)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(SENDS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert audience
    return Counter(statuses)


def test_replay_to_two_gunicorn_workers_is_refused_by_both(launch: Callable[..., ServiceProcess]) -> None:
    service = launch("two-workers", workers=2)
    for _ in range(3):  # several rounds: each round's 11 concurrent sends occupy both workers
        counts = send_replays([service])
        print(f"2 gunicorn workers, shared SQLite store: {dict(counts)}")
        assert counts == Counter({200: 1, 401: SENDS - 1})


def test_replay_to_two_replicas_sharing_redis_is_refused(launch: Callable[..., ServiceProcess],
                                                         redis_server: RedisServer) -> None:  # noqa: F811
    a = launch("replica-a", NMS_CDS_REDIS_URL=redis_server.url)
    b = launch("replica-b", NMS_CDS_REDIS_URL=redis_server.url)  # its own SQLite file: only Redis is shared
    for _ in range(3):
        counts = send_replays([a, b])
        print(f"2 replicas sharing Redis: {dict(counts)}")
        assert counts == Counter({200: 1, 401: SENDS - 1})


def test_replay_to_two_replicas_sharing_postgres_is_refused(launch: Callable[..., ServiceProcess],
                                                            postgres: PostgresServer) -> None:  # noqa: F811
    url = postgres.new_database()
    a = launch("pg-a", workers=2, NMS_CDS_DATABASE_URL=url)
    b = launch("pg-b", workers=2, NMS_CDS_DATABASE_URL=url)
    counts = send_replays([a, b])
    print(f"2 replicas x 2 workers sharing PostgreSQL: {dict(counts)}")
    assert counts == Counter({200: 1, 401: SENDS - 1})


def test_control_replicas_that_share_nothing_let_the_replay_through(launch: Callable[..., ServiceProcess]) -> None:
    a, b = launch("alone-a"), launch("alone-b")  # separate SQLite files, no Redis
    counts = send_replays([a, b])
    assert counts[200] == 2  # each replica accepts the token once: the tests above are not vacuous


# --- the Redis backend on its own ---------------------------------------------------------------------------


@pytest.fixture
def guard(redis_server: RedisServer) -> Iterator[RedisReplayGuard]:  # noqa: F811
    import redis

    redis.Redis.from_url(redis_server.url).flushdb()
    g = RedisReplayGuard(redis_server.url, max_per_issuer=10)
    yield g
    g.close()


def test_redis_claims_are_atomic_bounded_per_issuer_and_expire(guard: RedisReplayGuard) -> None:
    now = time.time()
    assert guard.claim("iss-1", "a", until=now + 60, now=now) is None
    assert guard.claim("iss-1", "a", until=now + 60, now=now) == "replay"
    assert guard.claim("iss-2", "a", until=now + 60, now=now) is None
    for i in range(9):
        assert guard.claim("iss-1", f"j{i}", until=now + 1, now=now) is None
    assert guard.claim("iss-1", "more", until=now + 60, now=now) == "full"
    assert guard.claim("iss-2", "b", until=now + 60, now=now) is None  # another issuer is not locked out
    assert guard.entries("iss-1") == 10
    later = now + 2  # the nine short-lived entries have expired
    assert guard.claim("iss-1", "more", until=later + 60, now=later) is None
    assert guard.entries("iss-1") == 2


def test_redis_concurrent_claims_admit_exactly_one(guard: RedisReplayGuard) -> None:
    results: list[Any] = []
    barrier = threading.Barrier(16)
    now = time.time()

    def claim() -> None:
        barrier.wait()
        results.append(guard.claim("iss", "same", until=now + 60, now=now))

    threads = [threading.Thread(target=claim) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(None) == 1 and results.count("replay") == 15


def test_redis_down_is_503_not_a_skipped_check(tmp_path: Path) -> None:
    from tests.conftest import free_port

    g = RedisReplayGuard(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    from cds_service.errors import StoreUnavailable

    with pytest.raises(StoreUnavailable, match="cannot reach the Redis server"):
        g.claim("iss", "x", until=time.time() + 60, now=time.time())


# --- the in-process cache (no store wired in) has the same per-issuer bound -----------------------------------


def test_in_process_cache_is_bounded_per_issuer_too() -> None:
    from cds_service.store import ReplayCache

    cache = ReplayCache(capacity=100, max_per_issuer=3)
    for i in range(3):
        assert cache.claim("flooder", f"j{i}", until=50, now=0) is None
    assert cache.claim("flooder", "j9", until=50, now=1) == "full"
    assert cache.claim("other", "j9", until=50, now=1) is None  # not locked out by the flooder
    assert cache.claim("flooder", "j9", until=100, now=51) is None  # the flooder's expired entries were purged
    assert len(cache) == 1


def test_report_with_the_store_unavailable_exits_1_naming_the_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from cds_service import cli
    from tests.conftest import free_port

    monkeypatch.setenv("NMS_CDS_DATABASE_URL", f"postgresql://u:secret-pw@127.0.0.1:{free_port()}/db")
    monkeypatch.setenv("NMS_CDS_STORE_TIMEOUT_SECONDS", "1")
    assert cli.main(["report"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the PostgreSQL server" in err and "secret-pw" not in err
