"""Real PostgreSQL and Redis servers for the tests, started and stopped by the test suite itself.

Both come from Debian's packages (``make test`` installs ``postgresql`` and ``redis-server`` when
missing). PostgreSQL: ``initdb`` of a throw-away cluster and ``postgres`` on a free loopback port;
as root (tests and CI run as root) both run as the ``postgres`` system user via ``runuser``. Redis:
``redis-server`` on a free loopback port without persistence. When a server cannot start, the tests
that need it skip on a developer machine and FAIL under ``CI=true``.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.run_bench import child_pids
from tests.conftest import free_port

IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(message: str) -> None:
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a real component that cannot start fails the test)")
    pytest.skip(message)


def _pg_bindir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@dataclass
class PostgresServer:
    bindir: Path
    datadir: Path
    port: int
    user: str | None  # system user the server runs as (None: the current one)
    proc: subprocess.Popen[bytes] | None = None
    _dbs: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.user, "--", *args] if self.user else list(args)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        log = (self.datadir.parent / "postgres.log").open("ab")
        self.proc = subprocess.Popen(
            self._cmd(str(self.bindir / "postgres"), "-D", str(self.datadir), "-p", str(self.port),
                      "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.datadir.parent}",
                      "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                      "-c", "max_connections=200"),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        import psycopg

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("postgres exited: " + (self.datadir.parent / "postgres.log").read_text()[-2000:])
            try:
                psycopg.connect(self.url(), connect_timeout=1).close()
                return
            except psycopg.OperationalError:
                time.sleep(0.1)
        raise RuntimeError("postgres did not accept connections within 30 s")

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster: clients are disconnected), waited for."""
        pidfile = self.datadir / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
            os.kill(pid, signal.SIGINT)
        except (OSError, ValueError, IndexError):
            pid = 0
        deadline = time.monotonic() + 20
        while pid and pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def new_database(self) -> str:
        import psycopg

        name = f"nmscds_{os.getpid()}_{next(self._dbs)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    bindir = _pg_bindir()
    if bindir is None:
        unavailable("PostgreSQL server binaries not found (Debian package 'postgresql'; `make test` installs it)")
        raise AssertionError  # unreachable
    root = Path(tempfile.mkdtemp(prefix="nms-cds-pg-"))
    user = None
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pw = pwd.getpwnam("nobody")
        user = pw.pw_name
        os.chown(root, pw.pw_uid, pw.pw_gid)
    server = PostgresServer(bindir, root / "data", free_port(), user)
    try:
        subprocess.run(server._cmd(str(bindir / "initdb"), "-D", str(server.datadir), "-U", "postgres",
                                   "--auth=trust", "-E", "UTF8", "--no-sync"),
                       check=True, capture_output=True, timeout=120)
        server.start()
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        server.stop()
        unavailable(f"PostgreSQL could not start: {exc}")
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server not found (Debian package 'redis-server'; `make test` installs it)")
        raise AssertionError  # unreachable
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="nms-cds-redis-")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)
    deadline = time.monotonic() + 15
    while True:
        try:
            client.ping()
            break
        except redis.RedisError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                unavailable("redis-server could not start")
            time.sleep(0.05)
    client.close()
    yield RedisServer(port, proc)
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(workdir, ignore_errors=True)


REPO = Path(__file__).resolve().parents[1]


@dataclass
class ServiceProcess:
    """``nms-cds serve`` (gunicorn) in its own process group."""

    base: str
    proc: subprocess.Popen[bytes]
    log: Path

    def worker_pids(self) -> list[int]:
        return child_pids(self.proc.pid)  # gunicorn's workers (not the nginx front)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)


def start_service(env: dict[str, str], *, workers: int, log: Path, threads: int = 1) -> ServiceProcess:
    """Start ``nms-cds serve --workers N`` on a free loopback port; wait until /healthz answers."""
    import requests

    port = free_port()
    full_env = {**os.environ, "NMS_CDS_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}", "NMS_CDS_LOG_LEVEL": "WARNING",
                **env}
    nms_cds = shutil.which("nms-cds", path=str(REPO / ".venv" / "bin")) or "nms-cds"
    with log.open("wb") as out:
        proc = subprocess.Popen([nms_cds, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers",
                                 str(workers), "--threads", str(threads)],
                                env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    service = ServiceProcess(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + 40
    while True:
        try:
            if requests.get(service.base + "/healthz", timeout=1).status_code == 200 and \
                    len(service.worker_pids()) >= workers:
                return service
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            service.stop()
            pytest.fail(f"nms-cds serve did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)
