"""The nginx front the gunicorn master owns: its configuration (every client limit from Settings) and process."""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cds_service.config import Settings
from cds_service.protocol.outcome import operation_outcome

log = logging.getLogger("cds_service.serve")

NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


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


def _json_body(status: int, message: str) -> str:
    return json.dumps(operation_outcome(status, message)).replace("'", "\\'")


def _error_locations(max_body_bytes: int) -> str:
    """The front's own error answers as internal locations with the service's OperationOutcome bodies."""
    answers = {
        400: "malformed HTTP request",
        408: "the request did not arrive in time",
        413: f"request body larger than {max_body_bytes} bytes",
        429: "too many requests at once from this address",
        503: "the service is not available; try again",
    }
    return "".join(
        f"        location = /_nms_cds_error/{status} {{\n            internal;\n"
        f"            return {status} '{_json_body(status, message)}';\n        }}\n"
        for status, message in answers.items())


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
    return f"""# written by nms-cds serve; see cds_service/serve/front.py
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

