"""Common pytest fixtures (Flask tutorial style): settings, app, client, and the in-repository datasets.

Everything a test opens, it closes:

* ``app`` (and ``app_for(settings)`` for a test that builds its own) close the app's runtime (store files, the
  FHIR query pool, the replay guard) on teardown; a test that leaves a runtime open fails, naming it.
* The session keeps every temporary file under one private directory (``$TMPDIR`` for the tests and every
  process they start), removed at the end, also after Ctrl-C or SIGTERM.
* Servers started by the tests run in their own process group (``start_group``); the groups are stopped at the
  end of the session at the latest (also on Ctrl-C, SIGTERM and at exit), and a process the tests started that
  is still alive when the session ends fails the run.
* Ports come from ``free_port()``: each pytest-xdist worker takes them from its own slice of 20000-32767 (below
  Linux's ephemeral range, so an outgoing connection never takes one), each port handed out once per process.
* The peak of open file descriptors is sampled after every test and reported at the end (limit: far below 1,024).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_service.app import create_app
from cds_service.config import Settings
from cds_service.runtime import Runtime

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO / "datasets"  # third-party test data, each file listed in datasets/MANIFEST.tsv
FHIR_BASE = "https://fhir.example.org/r4"
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
IN_CI = os.environ.get("CI", "").lower() == "true"
FD_LIMIT = 512  # the peak of open descriptors a run may reach (the default soft limit is 1,024)

# --- one private temporary directory per test process ------------------------------------------------------

WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
_SESSION_TMP = Path(tempfile.mkdtemp(prefix=f"nms-cds-pytest-{WORKER or 'main'}-"))
_OWNER = os.getpid()
if os.geteuid() == 0:
    _SESSION_TMP.chmod(0o711)  # root starts PostgreSQL as another user, whose data directory lies inside
os.environ["TMPDIR"] = str(_SESSION_TMP)  # for every process the tests start (nms-cds serve, nginx, node)
tempfile.tempdir = str(_SESSION_TMP)
# Apps built from the environment (Settings()) in tests keep their SQLite store in a throw-away directory.
os.environ.setdefault("NMS_CDS_DATA_DIR", str(_SESSION_TMP / "default-data"))


def session_tmp() -> Path:
    """This test process's private temporary directory (removed when the session ends)."""
    return _SESSION_TMP


# --- process groups the tests start --------------------------------------------------------------------------

_GROUPS: dict[int, subprocess.Popen[Any]] = {}
_EVER_STARTED: set[int] = set()  # every group start_group made (members outlive a killed leader)


def start_group(command: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen`` in a new session (its own process group), remembered so that the group is stopped
    at the end of the session at the latest, also on Ctrl-C, SIGTERM or a crash of the test process."""
    proc: subprocess.Popen[Any] = subprocess.Popen(list(command), start_new_session=True, **kwargs)
    _GROUPS[proc.pid] = proc
    _EVER_STARTED.add(proc.pid)
    return proc


def stop_group(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 20) -> int:
    """Signal the whole process group of ``proc``, wait for the leader (SIGKILL to the group after
    ``timeout``), then SIGKILL whatever is left in the group; the leader's exit code."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait(10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # members that outlived the leader
    _GROUPS.pop(proc.pid, None)
    return code


def _stop_all_groups() -> None:
    for proc in list(_GROUPS.values()):
        with contextlib.suppress(Exception):
            stop_group(proc, signal.SIGKILL, timeout=5)


def _descendants() -> list[tuple[int, str]]:
    """Live (not zombie) processes descended from this one, or in a process group it started (an orphan whose
    parent was killed), from /proc: (pid, command line)."""
    parents: dict[int, int] = {}
    groups: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z":
            parents[int(entry)] = int(fields[1])
            groups[int(entry)] = int(fields[2])
    found: set[int] = {pid for pid, group in groups.items() if group in _EVER_STARTED and pid != os.getpid()}
    frontier = [os.getpid(), *found]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                frontier.append(pid)
    result = []
    for pid in sorted(found):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmd = "?"
        result.append((pid, cmd.strip()))
    return result


def _kill_descendants() -> None:
    """SIGKILL every process descended from this one (by process group where it has its own)."""
    own = os.getpgrp()
    for pid, _ in _descendants():
        with contextlib.suppress(OSError):
            group = os.getpgid(pid)
            if group != own:
                os.killpg(group, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)


def _cleanup_at_exit() -> None:
    if os.getpid() != _OWNER:  # a forked child (gunicorn in-process, multiprocessing): not ours
        return
    _stop_all_groups()
    _kill_descendants()  # servers started without start_group (the local FHIR server's own helper)
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


atexit.register(_cleanup_at_exit)


def _on_sigterm(signum: int, frame: object) -> None:
    _cleanup_at_exit()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
    signal.signal(signal.SIGTERM, _on_sigterm)


# --- ports -------------------------------------------------------------------------------------------------

_PORT_LOW, _PORT_HIGH = 20000, 32767  # below the ephemeral range (32768-60999) that outgoing connections use
_handed_out: set[int] = set()
_next_port: list[int] = []


def _slice() -> tuple[int, int]:
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    index = int(WORKER[2:]) + 1 if WORKER.startswith("gw") and WORKER[2:].isdigit() else 0
    size = (_PORT_HIGH - _PORT_LOW) // (count + 1)
    low = _PORT_LOW + index * size
    return low, low + size


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and that no other test in this run is handed: from this
    worker's own slice, never twice in one process (a server that fails to bind it says so in its output)."""
    low, high = _slice()
    if not _next_port:
        _next_port.append(random.randrange(low, high))  # other runs on the same machine start elsewhere
    for _ in range(high - low):
        port = _next_port[0]
        _next_port[0] = low + (port + 1 - low) % (high - low)
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))  # without SO_REUSEADDR: skips ports still in TIME_WAIT
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {low}-{high}")


# --- data, settings and apps -------------------------------------------------------------------------------

def dataset_json(relative: str) -> Any:
    """A JSON file from ``datasets/``; a missing file fails the test (it never skips)."""
    path = DATASETS / relative
    if not path.is_file():
        pytest.fail(f"test data missing: datasets/{relative} (see datasets/MANIFEST.tsv)")
    return json.loads(path.read_text(encoding="utf-8"))


def make_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "auth": "off",
        "environment": "development",
        "fhir_allowlist": [FHIR_BASE, "http://127.0.0.1:8081"],
        "fixed_now": NOW,
        "public_base_url": "http://127.0.0.1:8080",
    }
    if "data_dir" not in overrides:  # a fresh store per app, inside the session's temporary directory
        base["data_dir"] = Path(tempfile.mkdtemp(prefix="store-", dir=_SESSION_TMP))
    base.update(overrides)
    return Settings(**base)


@contextlib.contextmanager
def app_for(settings: Settings | None = None) -> Iterator[Flask]:
    """``create_app(settings)`` whose runtime is closed on leaving the block."""
    application = create_app(settings)
    try:
        yield application
    finally:
        application.extensions["nms_cds"].close()


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    with app_for(settings) as application:
        yield application


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


# --- leak checks -------------------------------------------------------------------------------------------

_runtimes: list[Runtime] = []  # built during the current test
_all_runtimes: list[Runtime] = []  # built in this process (some at import: schemathesis reads an app's document)
_original_build = Runtime.build.__func__  # type: ignore[attr-defined]


def _tracked_build(cls: type[Runtime], settings: Settings) -> Runtime:
    from tests.helpers.secret_guard import GUARD, settings_secrets

    GUARD.add(settings_secrets(settings))  # before the build: its own log lines are checked too
    runtime: Runtime = _original_build(cls, settings)
    GUARD.add([runtime.hash_key.hex()])
    _runtimes.append(runtime)
    _all_runtimes.append(runtime)
    return runtime


Runtime.build = classmethod(_tracked_build)  # type: ignore[method-assign,assignment]
_fd_peak = [0]


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def _install_secret_guard() -> Any:
    import logging

    from tests.helpers.secret_guard import GUARD

    if GUARD not in logging.getLogger().handlers:
        logging.getLogger().addHandler(GUARD)
    return GUARD


@pytest.fixture(autouse=True)
def _logs_no_secret(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test during which a configured secret reached a log record (tests/helpers/secret_guard.py)."""
    guard = _install_secret_guard()
    guard.leaks.clear()
    yield
    leaks, guard.leaks[:] = list(guard.leaks), []
    if leaks:
        pytest.fail(f"{request.node.nodeid} logged a configured secret: " + "; ".join(leaks[:5]), pytrace=False)


@pytest.fixture(autouse=True)
def _closes_what_it_opens(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves an app's runtime open (it is closed here so the leak stops with it)."""
    before = len(_runtimes)
    yield
    opened = _runtimes[before:]
    del _runtimes[before:]
    left = [r for r in opened if not r.closed]
    for runtime in left:
        runtime.close()
    if left:
        pytest.fail(f"{request.node.nodeid} left {len(left)} app runtime(s) open: use the app fixture or "
                    "`with app_for(settings) as app:` (tests/conftest.py)", pytrace=False)
    fds = _open_fds()
    _fd_peak[0] = max(_fd_peak[0], fds)
    if fds > FD_LIMIT:
        pytest.fail(f"{fds} file descriptors open after {request.node.nodeid} (limit {FD_LIMIT}): a leak",
                    pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for runtime in _all_runtimes:  # those built outside any test (at import), whose module fixture never ran
        runtime.close()
    _fd_peak[0] = max(_fd_peak[0], _open_fds())
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller reports
        workeroutput["nms_cds_fd_peak"] = _fd_peak[0]


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """After every fixture's teardown: no process started by the tests may still be alive."""
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        deadline = time.monotonic() + 5
        left = _descendants()
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = _descendants()
        if left:
            sys.stderr.write("nms-cds tests: processes still alive after the session (killed now):\n" +
                             "".join(f"  {pid} {cmd[:200]}\n" for pid, cmd in left))
            for pid, _ in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
    _cleanup_at_exit()


def pytest_testnodedown(node: Any, error: Any) -> None:
    peak = getattr(node, "workeroutput", {}).get("nms_cds_fd_peak")
    if peak:
        _fd_peak[0] = max(_fd_peak[0], int(peak))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    terminalreporter.write_line(f"open file descriptors: peak {_fd_peak[0]} in one test process "
                                f"(a test fails above {FD_LIMIT})")


# --- the local FHIR server -----------------------------------------------------------------------------------

def require_local_fhir() -> None:
    """Skip a module when Node or the local FHIR server's packages are missing - except in CI, where the
    integration suite is required and a missing Node toolchain must fail loudly instead of skipping."""
    from cds_service.devtools import localfhir

    if localfhir.node_available():
        return
    problem = "node/npm or fhir_server/node_modules unavailable"
    try:
        localfhir.ensure_node_packages()
    except Exception as exc:
        problem += f" ({type(exc).__name__}: {exc})"
    if localfhir.node_available():
        return
    if os.environ.get("CI"):
        pytest.fail(f"integration tests need the local FHIR server in CI: {problem}", pytrace=False)
    pytest.skip(problem, allow_module_level=True)
