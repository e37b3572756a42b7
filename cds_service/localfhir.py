"""Start and stop the local Node FHIR R4 server (``fhir_server/server.mjs``) from Python.

The server is Medplum's in-memory ``FhirRouter`` behind a small ``node:http`` front (see
``fhir_server/README.md``). This module is for integration tests, benchmarks and development only; the
service itself never imports it.

    with LocalFhirServer(load=[Path("fhir_fixtures")]) as fhir:
        requests.get(f"{fhir.base_url}/Patient/p1", timeout=5)
        requests.get(f"{fhir.fault_url('status-503')}/Patient/p1", timeout=5)
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVER_DIR = REPO_ROOT / "fhir_server"
SERVER_SCRIPT = SERVER_DIR / "server.mjs"

READY_TIMEOUT_SECONDS = 30.0
STOP_GRACE_SECONDS = 5.0
NPM_CI_TIMEOUT_SECONDS = 600.0
STDERR_TAIL_LINES = 400

#: Fault modes understood by ``/fault/<mode>/fhir`` (keep in sync with ``FAULT_MODES`` in server.mjs).
FAULT_MODES: tuple[str, ...] = (
    "hang",
    "slow",
    "status-500",
    "status-502",
    "status-503",
    "status-401",
    "status-403",
    "status-404",
    "html",
    "truncated",
    "wrong-type",
    "huge",
    "next-loop",
    "next-offsite",
    "reset",
)


class LocalFhirError(RuntimeError):
    """The local FHIR server could not be installed, started or stopped."""


def node_available() -> bool:
    """True when ``node`` is on PATH and the server's npm packages are installed."""
    return shutil.which("node") is not None and (SERVER_DIR / "node_modules").is_dir()


def _server_dir(root: Path) -> Path:
    """Accept either the repository root or the ``fhir_server`` folder itself."""
    if (root / "server.mjs").is_file() and (root / "package.json").is_file():
        return root
    return root / "fhir_server"


def ensure_node_packages(root: Path = REPO_ROOT) -> None:
    """Run ``npm ci`` in ``fhir_server/`` when its ``node_modules`` folder is missing.

    ``root`` is the repository root (the ``fhir_server`` folder itself is accepted too).
    Raises :class:`LocalFhirError` when npm is missing or ``npm ci`` fails.
    """
    server_dir = _server_dir(root)
    if (server_dir / "node_modules").is_dir():
        return
    if not (server_dir / "package-lock.json").is_file():
        raise LocalFhirError(f"{server_dir / 'package-lock.json'} is missing; cannot run npm ci")
    npm = shutil.which("npm")
    if npm is None:
        raise LocalFhirError("npm is not on PATH: install Node.js 20 or newer to run the local FHIR server")
    try:
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=server_dir,
            capture_output=True,
            text=True,
            timeout=NPM_CI_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalFhirError(f"npm ci in {server_dir} failed: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout or "").splitlines()[-30:])
        raise LocalFhirError(f"npm ci in {server_dir} failed with exit code {proc.returncode}:\n{tail}")


def _node_flags(node: str) -> list[str]:
    """``--experimental-websocket`` for Node < 22 (Medplum uses the WebSocket global)."""
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10, check=False)
        major = int(out.stdout.strip().lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return ["--experimental-websocket"]
    return ["--experimental-websocket"] if major < 22 else []


class LocalFhirServer:
    """One ``node fhir_server/server.mjs`` process; a context manager.

    ``start()`` waits for the ``READY <base-url>`` line (at most 30 s) and raises
    :class:`LocalFhirError` with the captured stderr if the process dies or times out. ``stop()``
    sends SIGTERM to the process group, then SIGKILL after 5 s; it is idempotent.
    """

    def __init__(
        self,
        *,
        load: Sequence[Path] = (),
        port: int = 0,
        latency_ms: int = 0,
        page_size: int = 50,
        host: str = "127.0.0.1",
        quiet: bool = False,
        ready_timeout: float = READY_TIMEOUT_SECONDS,
        extra_args: Sequence[str] = (),
    ) -> None:
        if port < 0 or port > 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        if latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {latency_ms}")
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.load = tuple(Path(p) for p in load)
        self.port = port
        self.latency_ms = latency_ms
        self.page_size = page_size
        self.host = host
        self.quiet = quiet
        self.ready_timeout = ready_timeout
        # more server flags, e.g. ("--paging", "hapi", "--search-latency-ms", "1000"); see fhir_server/README.md
        self.extra_args = tuple(extra_args)
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._base_url: str | None = None
        self._stderr_lines: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._stdout_lines: queue.Queue[str | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    # --- public API ----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """FHIR base URL, e.g. ``http://127.0.0.1:41234/fhir`` (only after ``start()``)."""
        if self._base_url is None:
            raise LocalFhirError("the local FHIR server is not running; call start() first")
        return self._base_url

    @property
    def origin(self) -> str:
        """``http://host:port`` of the running server."""
        return self.base_url.removesuffix("/fhir")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def fault_url(self, mode: str, resource_type: str | None = None) -> str:
        """Base URL whose requests get fault ``mode`` (only for ``resource_type`` when given)."""
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; known: {', '.join(FAULT_MODES)}")
        spec = f"{mode}:{resource_type}" if resource_type else mode
        return f"{self.origin}/fault/{spec}/fhir"

    def stderr_tail(self) -> str:
        """The last lines the server wrote to stderr (request log, load summary, errors)."""
        with self._lock:
            return "\n".join(self._stderr_lines)

    def start(self) -> Self:
        if self._proc is not None:
            raise LocalFhirError("the local FHIR server was already started")
        node = shutil.which("node")
        if node is None:
            raise LocalFhirError("node is not on PATH: install Node.js 20 or newer")
        if not (SERVER_DIR / "node_modules").is_dir():
            raise LocalFhirError(f"{SERVER_DIR / 'node_modules'} is missing: run ensure_node_packages() first")
        cmd = [
            node,
            *_node_flags(node),
            str(SERVER_SCRIPT),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--latency-ms",
            str(self.latency_ms),
            "--page-size",
            str(self.page_size),
            "--exit-with-stdin",
            *self.extra_args,
        ]
        if self.quiet:
            cmd.append("--quiet")
        for directory in self.load:
            cmd += ["--load", str(directory)]
        started = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                cmd,
                cwd=REPO_ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # own process group: stop() signals the whole group
            )
        except OSError as exc:
            raise LocalFhirError(f"cannot start {' '.join(cmd)}: {exc}") from exc
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._spawn(self._drain_stdout, self._proc.stdout, "stdout")
        self._spawn(self._drain_stderr, self._proc.stderr, "stderr")
        try:
            self._base_url = self._wait_ready(started)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self._base_url = None
        if proc.poll() is None:
            self._signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self._signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=STOP_GRACE_SECONDS)
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        for thread in self._threads:
            thread.join(timeout=2)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        self._threads.clear()
        self._proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- internals -----------------------------------------------------------------------------

    def _spawn(self, target: Callable[[IO[bytes]], None], stream: IO[bytes], name: str) -> None:
        thread = threading.Thread(target=target, args=(stream,), name=f"localfhir-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _drain_stdout(self, stream: IO[bytes]) -> None:
        try:
            for raw in stream:
                self._stdout_lines.put(raw.decode("utf-8", "replace").rstrip("\r\n"))
        except (OSError, ValueError):
            pass
        finally:
            self._stdout_lines.put(None)

    def _drain_stderr(self, stream: IO[bytes]) -> None:
        try:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                with self._lock:
                    self._stderr_lines.append(line)
        except (OSError, ValueError):
            pass

    def _wait_ready(self, started: float) -> str:
        assert self._proc is not None
        deadline = started + self.ready_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                stderr = self._stderr_after_exit()
                raise LocalFhirError(f"local FHIR server not ready after {self.ready_timeout:.0f} s; stderr:\n{stderr}")
            try:
                line = self._stdout_lines.get(timeout=min(remaining, 0.25))
            except queue.Empty:
                if self._proc.poll() is not None:
                    raise LocalFhirError(self._died_message()) from None
                continue
            if line is None:
                self._proc.wait(timeout=STOP_GRACE_SECONDS)
                raise LocalFhirError(self._died_message())
            if line.startswith("READY "):
                return line.split(" ", 1)[1].strip()

    def _died_message(self) -> str:
        code = self._proc.returncode if self._proc is not None else None
        return f"local FHIR server exited with code {code} before READY; stderr:\n{self._stderr_after_exit()}"

    def _stderr_after_exit(self) -> str:
        # Give the stderr thread a moment to collect the last lines of a dying process.
        if self._proc is not None and self._proc.poll() is not None:
            for thread in self._threads:
                if thread.name.endswith("stderr"):
                    thread.join(timeout=1)
        return self.stderr_tail()

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            proc.send_signal(sig)
