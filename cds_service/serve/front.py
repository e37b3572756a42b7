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
from cds_service.serve import frontauth

log = logging.getLogger("cds_service.serve")

#: Largest body of a request that needs no upload (ops routes, unknown paths): held in memory, never spooled.
SMALL_BODY_BYTES = 4096
#: The in-memory part of an authenticated hook call's body; beyond it nginx spools to client_body_temp_path.
HOOK_BODY_BUFFER_BYTES = 64 * 1024
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


#: The front's own answers (nginx refuses before the service sees the request): status → the FHIR issue type
#: (http://hl7.org/fhir/R4/valueset-issue-type.html) and what the client is told, as an OperationOutcome.
FRONT_ANSWERS: dict[int, tuple[str, str]] = {
    400: ("invalid", "malformed HTTP request"),
    401: ("security", "authentication required: a valid CDS client JWT in Authorization"),
    403: ("forbidden", "forbidden"),
    404: ("not-found", "no such resource"),
    405: ("not-supported", "method not allowed"),
    408: ("timeout", "the request did not arrive in time"),
    411: ("invalid", "a request body needs a Content-Length or chunked encoding"),
    413: ("too-costly", "request body too large"),
    414: ("too-long", "request URI too long"),
    416: ("invalid", "range not satisfiable"),
    429: ("throttled", "too many requests at once; try again"),
    431: ("too-long", "request header fields too large"),
    494: ("too-long", "request header fields too large"),
    500: ("exception", "internal error; see the service log"),
    501: ("not-supported", "not implemented"),
    502: ("transient", "the service is not available; try again"),
    503: ("transient", "the service is not available; try again"),
    504: ("timeout", "the service did not answer in time; try again"),
    505: ("not-supported", "HTTP version not supported"),
}
#: nginx's non-standard 494 (headers too large) is sent as 431, the standard code.
_SENT_AS = {494: 431}
_RETRY = {429, 502, 503, 504}


def outcome(code: str, diagnostics: str) -> str:
    """The JSON of an OperationOutcome with one error issue (the shape of the service's error answers)."""
    return json.dumps({"resourceType": "OperationOutcome",
                       "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}]})


def _error_pages(max_body_bytes: int) -> str:
    """``error_page`` for every status nginx answers itself, each an internal location returning the
    OperationOutcome JSON (an unauthenticated 401 with the challenge and no lingering on its body)."""
    lines = []
    for status, (code, message) in FRONT_ANSWERS.items():
        sent = _SENT_AS.get(status, status)
        if status == 413:
            message = f"request body larger than {max_body_bytes} bytes"
        body = outcome(code, message).replace("'", "\\'")
        extra = ""
        if status == 401:
            extra = ("            add_header WWW-Authenticate 'Bearer realm=\"cds-services\"' always;\n"
                     "            lingering_time 1s;\n            lingering_timeout 1s;\n")
        elif status in _RETRY:
            extra = "            add_header Retry-After 5 always;\n"
        lines.append(f"        error_page {status} ={sent} /_nms_cds_error/{status};\n")
        lines.append(f"        location = /_nms_cds_error/{status} {{\n            internal;\n{extra}"
                     f"            return {sent} '{body}';\n        }}\n")
    return "".join(lines)


def nginx_conf(settings: Settings, *, host: str, port: int, upstream: Path, runtime: Path) -> str:
    """The nginx configuration of the front (everything under ``runtime``; nothing read from /etc/nginx).

    Hook and feedback calls pass the header-only JWT check (serve/frontauth.py, ``auth_request``) before nginx
    reads their body: an unauthenticated request is answered 401 without a byte of its body stored. Every other
    path takes a body of at most SMALL_BODY_BYTES, in memory. Only authenticated uploads may spool to disk:
    at most ``front_max_uploads`` at once, each at most ``max_body_bytes`` (docs/security.md).
    """
    s = settings
    conns = s.front_max_connections
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and 2 * conns + 64 > hard:  # a client and an upstream fd per connection
        conns = max(64, (hard - 64) // 2)
        log.warning(f"NMS_CDS_FRONT_MAX_CONNECTIONS lowered to {conns}: open-file limit {hard}",
                    extra={"event": "config-warning"})
    proxy_read = s.request_timeout_seconds + 5
    per_client = (f"            limit_conn nms_cds_per_client {s.front_max_requests_per_client};\n"
                  if s.front_max_requests_per_client else "")
    proxy = f"""            proxy_pass http://nms_cds_app;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header Connection "";
            proxy_request_buffering on;
            proxy_buffering on;
            proxy_connect_timeout 2s;
            proxy_send_timeout 30s;
            proxy_read_timeout {_ms(proxy_read)};
"""
    # The body is read only in the named location, reached after the header-only JWT pass (try_files runs after
    # the access phase): its limits count authenticated uploads only.
    hooks = f"""            auth_request {frontauth.AUTH_PATH};
            try_files /nms-cds-no-file @nms_cds_upload;
"""
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
    map $request_method $nms_cds_upload {{ POST 1; default ""; }}
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
    client_body_buffer_size {SMALL_BODY_BYTES};
    client_body_in_file_only off;
    client_body_temp_path {s.front_spool_dir or runtime / "client_body"};
    proxy_temp_path {runtime}/proxy;
    fastcgi_temp_path {runtime}/fastcgi;
    uwsgi_temp_path {runtime}/uwsgi;
    scgi_temp_path {runtime}/scgi;
    limit_conn_zone $binary_remote_addr zone=nms_cds_per_client:10m;
    limit_conn_zone $nms_cds_upload zone=nms_cds_uploads:1m;
    limit_conn_status 429;
    limit_conn_log_level info;
    upstream nms_cds_app {{
        server unix:{upstream};
    }}
    server {{
        listen {_listen(host, port)} backlog=4096;
        root {runtime}/no-files;
        location / {{
{per_client}            client_max_body_size {SMALL_BODY_BYTES};
{proxy}        }}
        location = /cds-services {{
{hooks}        }}
        location /cds-services/ {{
{hooks}        }}
        location @nms_cds_upload {{
{per_client}            limit_conn nms_cds_uploads {s.front_max_uploads};
            client_body_buffer_size {HOOK_BODY_BUFFER_BYTES};
{proxy}        }}
        location = {frontauth.AUTH_PATH} {{
            internal;
            proxy_pass http://nms_cds_app;
            proxy_method GET;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header Transfer-Encoding "";
            proxy_set_header Connection "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Original-Content-Length $http_content_length;
            proxy_set_header X-Original-Transfer-Encoding $http_transfer_encoding;
            proxy_http_version 1.1;
            proxy_connect_timeout 2s;
            proxy_read_timeout {_ms(proxy_read)};  # queued behind busy workers like any request
        }}
{_error_pages(s.max_body_bytes)}    }}
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

