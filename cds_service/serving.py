"""How ``nms-cds serve`` runs: gunicorn workers behind a buffering nginx front, JSON-only output, a request
watchdog. The design and its measured figures are in docs/reliability.md ("Serving").

- **Front** (``NMS_CDS_FRONT=nginx``, the default): gunicorn's sync and gthread workers read a request in
  the worker (a thread per connection), so a client that trickles its headers holds that worker. nginx reads
  whole requests (headers within ``NMS_CDS_CLIENT_HEADER_TIMEOUT_SECONDS``, body pauses up to
  ``NMS_CDS_CLIENT_BODY_TIMEOUT_SECONDS``, bodies beyond 64 KiB spooled to a temporary file) in its event loop
  and passes only complete requests to gunicorn over a Unix socket; it also buffers the answers, so slow
  readers do not hold workers either. The gunicorn master starts nginx once its socket is bound
  (``when_ready``) and stops it on exit; nginx's own answers (400/408/413/502/504) are the documented JSON
  error bodies. ``none``: gunicorn listens on the port itself (only behind another buffering proxy).
- **Output**: the master sends its own stdout/stderr and those of the workers and of nginx through one pipe;
  a thread passes JSON lines on and turns anything else (nginx's error log, stray prints, tracebacks) into
  one JSON record per line (a traceback becomes one record naming the exception type, never its text).
- **Watchdog**: a request still running after ``NMS_CDS_REQUEST_TIMEOUT_SECONDS`` gets
  :class:`~cds_service.errors.ServiceOverrun` raised in its thread, which the error handlers answer as a 503
  JSON error; gunicorn's own ``timeout`` (which kills the worker and sends an HTML page) is set 10 s later.
- **Collector pause** (:class:`GcPause`): the cyclic garbage collector is paused while requests run, so that it
  never walks a request's decoded JSON (a 10,000-Observation prefetch is about a million objects, all new, so
  every young-generation collection during the request walked them: about 50 ms of 235 ms, bench/README.md).
  Reference counting frees the request's data as usual; the collector runs again when no request is running.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import logging
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from cds_service.config import Settings
from cds_service.errors import ServiceOverrun

log = logging.getLogger("cds_service.serve")

NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


# --- request watchdog ---------------------------------------------------------------------------------------

def _raise_in_thread(ident: int, exc: type[BaseException]) -> bool:
    count = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc))
    if count > 1:  # pragma: no cover - cannot happen for one live thread id; undo as the C API asks
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)
        return False
    return bool(count)


class RequestWatchdog:
    """Raises :class:`ServiceOverrun` in a request thread that is still armed after ``seconds``.

    The exception is delivered when the thread next runs Python bytecode (a C call in progress finishes
    first); the error handler answers it, the worker and its other threads go on. One daemon thread per
    process, started on first use (so after gunicorn's fork).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._armed: dict[int, float] = {}
        self._cond = threading.Condition()
        self._pid: int | None = None

    def arm(self) -> None:
        with self._cond:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._armed.clear()
                threading.Thread(target=self._run, name="nms-cds-watchdog", daemon=True).start()
            was_empty = not self._armed
            self._armed[threading.get_ident()] = time.monotonic() + self.seconds
            if was_empty:
                self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._armed.pop(threading.get_ident(), None)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for ident, due in list(self._armed.items()):
                    if due <= now:
                        del self._armed[ident]
                        _raise_in_thread(ident, ServiceOverrun)
                nearest = min(self._armed.values(), default=now + 60.0)
                self._cond.wait(timeout=max(nearest - now, 0.005))


class GcPause:
    """Pauses the cyclic garbage collector from the first running request until none is running.

    A request's JSON makes no reference cycles, and all of it is freed by reference counting when the request
    ends; a collection during the request can free nothing of it and only walks it. With overlapping requests
    (gthread workers) the pause could last indefinitely, so a running pause older than ``max_seconds`` makes
    the request that ends then run one full collection and start a new pause. A collector that was off before
    (``gc.disable()`` by the embedding program) stays off.
    """

    def __init__(self, max_seconds: float = 2.0) -> None:
        self.max_seconds = max_seconds
        self._lock = threading.Lock()
        self._running = 0
        self._since = 0.0
        self._resume = False

    def enter(self) -> None:
        with self._lock:
            if self._running == 0:
                self._resume = gc.isenabled()
                gc.disable()
                self._since = time.monotonic()
            self._running += 1

    def exit(self) -> None:
        collect = False
        with self._lock:
            if self._running == 0:  # pragma: no cover - an exit without its enter
                return
            self._running -= 1
            if self._running == 0:
                if self._resume:
                    gc.enable()
            elif self._resume and time.monotonic() - self._since > self.max_seconds:
                collect = True
                self._since = time.monotonic()
        if collect:  # outside the lock: other requests start and end meanwhile
            gc.collect()


# --- nginx front --------------------------------------------------------------------------------------------

def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return next((path for path in NGINX_CANDIDATES if os.access(path, os.X_OK)), None)


def _listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def _json_body(error: str, message: str) -> str:
    return json.dumps({"error": error, "message": message}).replace("'", "\\'")


def _error_locations(max_body_bytes: int) -> str:
    """The front's own error answers as internal locations with the documented JSON bodies."""
    answers = {
        400: ("invalid", "malformed HTTP request"),
        408: ("timeout", "the request did not arrive in time"),
        413: ("too-costly", f"request body larger than {max_body_bytes} bytes"),
        429: ("too-many-requests", "too many requests at once from this address"),
        503: ("unavailable", "the service is not available; try again"),
    }
    return "".join(
        f"        location = /_nms_cds_error/{status} {{\n            internal;\n"
        f"            return {status} '{_json_body(error, message)}';\n        }}\n"
        for status, (error, message) in answers.items())


def nginx_conf(settings: Settings, *, host: str, port: int, upstream: Path, runtime: Path) -> str:
    """The nginx configuration of the front (everything under ``runtime``; nothing read from /etc/nginx)."""
    s = settings
    error_locations = _error_locations(s.max_body_bytes)
    conns = s.front_max_connections
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and 2 * conns + 64 > hard:  # a client and an upstream fd per connection
        conns = max(64, (hard - 64) // 2)
        log.warning(f"NMS_CDS_FRONT_MAX_CONNECTIONS lowered to {conns}: open-file limit {hard}",
                    extra={"event": "config-warning"})
    proxy_read = s.request_timeout_seconds + 5
    per_client = (f"        limit_conn nms_cds_per_client {s.front_max_requests_per_client};\n"
                  if s.front_max_requests_per_client else "")
    return f"""# written by nms-cds serve; see cds_service/serving.py
daemon off;
master_process on;
worker_processes 1;
pid {runtime}/nginx.pid;
error_log stderr warn;
worker_rlimit_nofile {2 * conns + 64};
events {{
    worker_connections {conns};
}}
http {{
    log_format nmscds escape=json
        '{{"ts":"$time_iso8601","level":"info","logger":"nginx.access","msg":"answered by the front",'
        '"event":"front-answer","method":"$request_method","status":$status,'
        '"request_time_s":"$request_time","request_id":"$http_x_request_id"}}';
    map $upstream_status $front_answered {{ "" 1; "502" 1; "504" 1; default 0; }}
    access_log /dev/stderr nmscds if=$front_answered;
    server_tokens off;
    default_type application/json;
    client_header_timeout {_ms(s.client_header_timeout_seconds)};
    client_body_timeout {_ms(s.client_body_timeout_seconds)};
    keepalive_timeout {_ms(s.keepalive_timeout_seconds)};
    send_timeout 10s;
    reset_timedout_connection on;
    client_header_buffer_size 1k;
    large_client_header_buffers 4 16k;
    client_max_body_size {s.max_body_bytes};
    client_body_buffer_size 64k;
    client_body_temp_path {runtime}/client_body;
    proxy_temp_path {runtime}/proxy;
    fastcgi_temp_path {runtime}/fastcgi;
    uwsgi_temp_path {runtime}/uwsgi;
    scgi_temp_path {runtime}/scgi;
    limit_conn_zone $binary_remote_addr zone=nms_cds_per_client:10m;
    limit_conn_status 429;
    limit_conn_log_level info;
    upstream nms_cds_app {{
        server unix:{upstream};
    }}
    server {{
        listen {_listen(host, port)} backlog=4096;
{per_client}        location / {{
            proxy_pass http://nms_cds_app;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header Connection "";
            proxy_request_buffering on;
            proxy_buffering on;
            proxy_connect_timeout 2s;
            proxy_send_timeout 30s;
            proxy_read_timeout {_ms(proxy_read)};
        }}
        error_page 400 414 431 494 /_nms_cds_error/400;
        error_page 408 /_nms_cds_error/408;
        error_page 413 /_nms_cds_error/413;
        error_page 429 /_nms_cds_error/429;
        error_page 500 502 503 504 /_nms_cds_error/503;
{error_locations}    }}
}}
"""


def _die_with_parent() -> None:
    """In the nginx child before exec: Linux sends it SIGTERM if the gunicorn master dies (even by SIGKILL),
    so no orphaned nginx keeps the port."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Front:
    """The nginx process the gunicorn master owns."""

    def __init__(self, binary: str, conf: Path, *, host: str, port: int) -> None:
        self.binary, self.conf, self.host, self.port = binary, conf, host, port
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def start(self, timeout: float = 10.0) -> None:
        if os.geteuid() == 0:  # nginx's workers then run as nobody: let them reach the Unix socket
            os.chmod(self.conf.parent, 0o711)
        self.proc = subprocess.Popen(
            [self.binary, "-e", "stderr", "-p", str(self.conf.parent), "-c", str(self.conf)],
            stdin=subprocess.DEVNULL, close_fds=True, preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout
        probe = "127.0.0.1" if self.host in ("0.0.0.0", "") else ("::1" if self.host == "::" else self.host)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode} at start (see the log above)")
            with contextlib.suppress(OSError), socket.create_connection((probe, self.port), timeout=0.5):
                return
            time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen on {_listen(self.host, self.port)} within {timeout:.0f} s")

    def watch(self, on_exit: Callable[[int | None], None]) -> None:
        """Call ``on_exit()`` (from a daemon thread) if nginx ends while we are not stopping it."""

        def run() -> None:
            while self.proc is not None and self.proc.poll() is None:
                time.sleep(0.2)
            if not self.stopping:
                on_exit(self.proc.returncode if self.proc is not None else None)

        threading.Thread(target=run, name="nms-cds-front-watch", daemon=True).start()

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping = True
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)  # graceful: finish requests in flight
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=2)
        except ChildProcessError:  # reaped by gunicorn's SIGCHLD handler
            pass


# --- JSON-only output ---------------------------------------------------------------------------------------

_NGINX_LINE = re.compile(rb"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(\w+)\] \d+#\d+: (?:\*\d+ )?(.*)$")
_NGINX_LEVELS = {b"emerg": "critical", b"alert": "critical", b"crit": "critical", b"error": "error",
                 b"warn": "warning", b"notice": "info", b"info": "info", b"debug": "debug"}
_MAX_TEXT = 1000


def _record(level: str, logger: str, msg: str, **extra: Any) -> bytes:
    now = time.time()
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    payload = {"ts": ts, "level": level, "logger": logger, "msg": msg[:_MAX_TEXT], **extra}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


class OutputFunnel:
    """Point this process's fd 1 and 2 (inherited by gunicorn workers and nginx) at a pipe; a thread writes
    every line to the original stderr as JSON. ``close()`` restores the descriptors and drains the pipe."""

    def __init__(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        self._saved_out = os.dup(1)
        self._saved_err = os.dup(2)
        self._sink: IO[bytes] = os.fdopen(os.dup(self._saved_err), "wb", buffering=0)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._source = os.fdopen(read_fd, "rb")
        self._traceback: list[bytes] | None = None
        self._thread = threading.Thread(target=self._run, name="nms-cds-output", daemon=True)
        self._thread.start()

    def _emit(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self._sink.write(data)

    def _run(self) -> None:
        for raw in self._source:
            self._line(raw.rstrip(b"\r\n"))
        if self._traceback is not None:
            self._end_traceback(b"")

    def _line(self, line: bytes) -> None:
        if self._traceback is not None:
            if line.startswith((b" ", b"\t")) or not line:
                self._traceback.append(line)
                return
            self._end_traceback(line)
            return
        if not line.strip():
            return
        if line.startswith(b"{") and line.endswith(b"}"):
            try:
                if isinstance(json.loads(line), dict):
                    self._emit(line + b"\n")
                    return
            except ValueError:
                pass
        if line.startswith(b"Traceback (most recent call last):"):
            self._traceback = []
            return
        match = _NGINX_LINE.match(line)
        if match:
            level = _NGINX_LEVELS.get(match.group(1), "info")
            if match.group(2).startswith((b"client ", b"a client request body is buffered", b"an upstream response")):
                level = "info"  # a client's mistake answered with a 4xx, or a large body spooled: not a fault
            self._emit(_record(level, "nginx", match.group(2).decode("utf-8", "replace")))
            return
        self._emit(_record("warning", "stderr", line.decode("utf-8", "replace")))

    def _end_traceback(self, last: bytes) -> None:
        frames = [f for f in self._traceback or [] if f.lstrip().startswith(b"File ")]
        self._traceback = None
        exc_type = last.split(b":", 1)[0].strip().decode("utf-8", "replace")[:100] or "unknown"
        where = frames[-1].strip().decode("utf-8", "replace")[:300] if frames else ""
        # the exception's text may carry request data: only its type and the innermost frame are kept
        self._emit(_record("error", "stderr", "uncaught exception", exception=exc_type, where=where))

    def close(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(self._saved_out, 1)
        os.dup2(self._saved_err, 2)
        self._thread.join(timeout=3)
        os.close(self._saved_out)
        os.close(self._saved_err)


def gunicorn_logger_class() -> type:
    """gunicorn's logger with every handler formatted as our JSON lines (tracebacks: the type only)."""
    from gunicorn.glogging import Logger

    from cds_service.logs import JsonFormatter

    class JsonGunicornLogger(Logger):  # type: ignore[misc]
        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            for handler in (*self.error_log.handlers, *self.access_log.handlers):
                handler.setFormatter(JsonFormatter())

    return JsonGunicornLogger


_GUNICORN_ERRORS = {400: "invalid", 403: "forbidden", 414: "invalid", 417: "invalid", 431: "invalid",
                    500: "internal", 501: "not-implemented"}


def json_gunicorn_errors() -> None:
    """Make gunicorn's own error answers (a worker killed mid-request, a malformed request when there is no
    front) the documented JSON error instead of its HTML page. Called in the master before the fork."""
    from gunicorn import util

    def write_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
        error = _GUNICORN_ERRORS.get(status_int, "error")
        message = "internal error; see the service log" if status_int >= 500 else "malformed HTTP request"
        body = json.dumps({"error": error, "message": message}).encode()
        head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
        util.write_nonblock(sock, head + body)

    util.write_error = write_error


def clean_multiproc_dir(path: Path) -> None:
    """Empty (or create) the prometheus multiprocess directory: stale files would add old counts."""
    path.mkdir(parents=True, exist_ok=True)
    for item in path.glob("*.db"):
        with contextlib.suppress(FileNotFoundError):
            item.unlink()
