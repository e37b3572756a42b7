"""The client-side deadline and the breaker (cds_service/store/deadline.py) without a database: a socket that
never answers, and a Redis address that accepts connections and stays silent."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from cds_service.errors import StoreUnavailable
from cds_service.store.deadline import DEADLINES, Breaker
from cds_service.store.redis_replay import RedisReplayGuard
from tests.conftest import free_port, make_settings


def test_a_call_blocked_on_a_silent_socket_ends_at_its_deadline() -> None:
    ours, theirs = socket.socketpair()
    try:
        started = time.monotonic()
        with DEADLINES.guard(ours.fileno(), 0.2) as fired:
            assert ours.recv(1) == b""  # the deadline shut the socket down: end of file instead of a hang
        assert fired and 0.15 < time.monotonic() - started < 2.0
        with DEADLINES.guard(theirs.fileno(), 5.0) as fired:
            pass
        assert not fired  # a call that ended in time is left alone
    finally:
        ours.close()
        theirs.close()


def test_the_breaker_fails_fast_while_open_and_closes_when_the_probe_succeeds() -> None:
    probes: list[float] = []
    healthy = threading.Event()

    def probe() -> None:
        probes.append(time.monotonic())
        if not healthy.is_set():
            raise StoreUnavailable("still down")

    breaker = Breaker(probe, interval=0.05)
    breaker.before()  # closed: nothing happens
    breaker.failed("down")
    with pytest.raises(StoreUnavailable, match="down"):
        breaker.before()
    healthy.set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            breaker.before()
            break
        except StoreUnavailable:
            time.sleep(0.02)
    breaker.before()  # closed again after a successful probe
    assert probes


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP address that accepts connections and never answers (a stopped Redis)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", free_port()))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()


def test_a_silent_redis_costs_one_timeout_then_fails_fast(silent_server: str) -> None:
    settings = make_settings(redis_url=silent_server, store_timeout_seconds=0.5)
    guard = RedisReplayGuard(settings.redis_url.get_secret_value(),  # type: ignore[union-attr]
                             timeout=settings.store_timeout_seconds)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="did not answer in time"):
            guard.claim("iss", "jti-1", time.time() + 60, time.time())
        first = time.monotonic() - started
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="did not answer in time"):
            guard.claim("iss", "jti-2", time.time() + 60, time.time())
        second = time.monotonic() - started
        assert 0.4 < first < 2.0  # one socket timeout, no retries
        assert second < first / 5  # the breaker answered without waiting
    finally:
        guard.close()


def test_a_store_timeout_not_below_the_request_timeout_is_warned_about() -> None:
    assert not [n for n in make_settings().warnings() if "STORE_TIMEOUT" in n]
    notes = make_settings(store_timeout_seconds=20, request_timeout_seconds=20).warnings()
    assert any("NMS_CDS_STORE_TIMEOUT_SECONDS=20 is not below" in n for n in notes)
