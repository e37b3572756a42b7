"""A database or Redis that accepts connections and never answers (its processes stopped with SIGSTOP): every
hook call gets 503 with Retry-After within NMS_CDS_STORE_TIMEOUT_SECONDS (plus a margin), /healthz keeps
answering at once, /readyz says not ready, no gunicorn worker is killed, and SIGCONT brings the service back.

Real ``nms-cds serve`` (2 sync workers, JWT, nginx front when installed), real PostgreSQL and redis-server.
Measured before the client-side deadline: with PostgreSQL stopped, hook calls waited until gunicorn killed
both workers at 30 s; ``/healthz`` was blocked meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

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
STORE_TIMEOUT = 5.0  # the default NMS_CDS_STORE_TIMEOUT_SECONDS
MARGIN = 1.5  # request handling around the store call, nginx, a loaded test machine
PATH = "/cds-services/nms-order-sign"


def hook_call(service: ServiceProcess, key: object) -> tuple[int, float, requests.Response]:
    token = make_token(key, iss=ISS, aud=service.base + PATH, now=time.time())  # type: ignore[arg-type]
    started = time.monotonic()
    response = requests.post(service.base + PATH, json=hook_request(prefetch=febrile_prefetch()), timeout=60,
                             headers={"Authorization": f"Bearer {token}"})
    return response.status_code, time.monotonic() - started, response


class HealthPoller:
    """GET /healthz every 50 ms from its own thread; the latencies (seconds) of each answer."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    status = session.get(self.base + "/healthz", timeout=10).status_code
                    if status != 200:
                        self.failures.append(str(status))
                except requests.RequestException as exc:
                    self.failures.append(type(exc).__name__)
                self.latencies.append(time.monotonic() - started)
                self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


@pytest.fixture
def serve_jwt(tmp_path: Path) -> Iterator[Callable[..., tuple[ServiceProcess, object]]]:
    key = ec_key()
    clients = write_trusted_clients(tmp_path / "clients.json", [{"iss": ISS, "jwks": jwks(key)}])
    started: list[ServiceProcess] = []

    def run(**env: str) -> tuple[ServiceProcess, object]:
        service = start_service({"NMS_CDS_AUTH": "jwt", "NMS_CDS_TRUSTED_CLIENTS": str(clients),
                                 "NMS_CDS_DATA_DIR": str(tmp_path / "data"), "NMS_CDS_ENVIRONMENT": "production",
                                 "NMS_CDS_LOG_LEVEL": "INFO", **env},
                                workers=2, log=tmp_path / "serve.log")
        started.append(service)
        return service, key

    yield run
    for service in started:
        service.stop()


def _signal_server(pid: int, sig: int) -> None:
    """``sig`` to a server process and every process it forked (PostgreSQL's backends leave the postmaster's
    process group with setsid(), so killpg would stop the postmaster alone and open connections would go on)."""
    try:
        children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        children = []
    for target in ([pid, *children] if sig == signal.SIGSTOP else [*children, pid]):
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, sig)


def _outage(service: ServiceProcess, key: object, group: int, seconds: float) -> None:
    """Stop the back-end's processes for ``seconds`` while calling the service; check the guarantees."""
    status, _, _ = hook_call(service, key)
    assert status == 200  # warm: each worker's connection may already be open
    workers = sorted(service.worker_pids())
    _signal_server(group, signal.SIGSTOP)
    poller = HealthPoller(service.base)
    calls: list[tuple[int, float, str | None]] = []
    ready: list[int] = []
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            status, took, response = hook_call(service, key)
            calls.append((status, took, response.headers.get("Retry-After")))
            if len(calls) == 3:
                ready.append(requests.get(service.base + "/readyz", timeout=STORE_TIMEOUT + 5).status_code)
            time.sleep(0.2)
    finally:
        _signal_server(group, signal.SIGCONT)
        poller.stop()
    latencies = sorted(poller.latencies)
    took_all = [t for _, t, _ in calls]
    print(f"{len(calls)} hook calls during a {seconds:g} s stop: statuses {sorted({s for s, _, _ in calls})}, "
          f"latency max {max(took_all):.2f} s, median {statistics.median(took_all):.3f} s; /healthz "
          f"{len(latencies)} answers, median {statistics.median(latencies) * 1000:.1f} ms, p95 "
          f"{latencies[int(len(latencies) * 0.95)] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    assert {status for status, _, _ in calls} == {503}
    assert all(retry for _, _, retry in calls)
    assert max(took_all) < STORE_TIMEOUT + MARGIN
    assert ready == [503]
    assert poller.failures == []
    assert latencies[int(len(latencies) * 0.95)] < 0.1
    assert latencies[-1] < 1.0  # never queued behind a hung call
    assert sorted(service.worker_pids()) == workers  # no worker killed or replaced
    log = service.log.read_text(errors="replace")
    assert "WORKER TIMEOUT" not in log and "SIGKILL" not in log
    # back after SIGCONT: each worker's breaker probes the back-end about once a second
    deadline = time.monotonic() + 2 * STORE_TIMEOUT
    while (ready_now := requests.get(service.base + "/readyz", timeout=10).status_code) != 200 and \
            time.monotonic() < deadline:
        time.sleep(0.2)
    assert ready_now == 200
    assert [hook_call(service, key)[0] for _ in range(4)] == [200] * 4


def test_stopped_postgres_gives_503_in_time_and_workers_live(
        serve_jwt: Callable[..., tuple[ServiceProcess, object]], postgres: PostgresServer) -> None:  # noqa: F811
    service, key = serve_jwt(NMS_CDS_DATABASE_URL=postgres.new_database())
    assert postgres.proc is not None
    _outage(service, key, postgres.proc.pid, float(os.environ.get("NMS_CDS_TEST_STOP_SECONDS", "40")))


def test_silent_redis_gives_503_in_time_and_workers_live(
        serve_jwt: Callable[..., tuple[ServiceProcess, object]], redis_server: RedisServer) -> None:  # noqa: F811
    service, key = serve_jwt(NMS_CDS_REDIS_URL=redis_server.url)
    _outage(service, key, redis_server.proc.pid, 12.0)
