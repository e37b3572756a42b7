"""Every answer the nginx front gives itself (the request never reached the service) is an OperationOutcome in
JSON, never nginx's HTML page: each status provoked against a real ``nms-cds serve``."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from cds_service.config import Settings
from cds_service.serve import front
from tests.system.test_serving import HOOK_PATH, _require_nginx, serve

ISSUE_TYPES = {"invalid", "structure", "required", "value", "invariant", "security", "login", "unknown",
               "expired", "forbidden", "suppressed", "processing", "not-supported", "duplicate",
               "multiple-matches", "not-found", "deleted", "too-long", "code-invalid", "extension", "too-costly",
               "business-rule", "conflict", "transient", "lock-error", "no-store", "exception", "timeout",
               "incomplete", "throttled", "informational"}  # http://hl7.org/fhir/R4/valueset-issue-type.html


def raw(port: int, data: bytes, *, wait: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as is; read the answer until the front closes or ``wait`` passes."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        answer = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            answer += chunk
            head, sep, body = answer.partition(b"\r\n\r\n")
            if sep and b"Content-Length:" in head:
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split(" ")[1]), headers, body


def assert_outcome(status: int, headers: dict[str, str] | Any, body: bytes, expected: int, code: str) -> None:
    assert status == expected, (status, body[:300])
    assert headers["Content-Type"] == "application/json", headers
    outcome = json.loads(body)
    assert outcome["resourceType"] == "OperationOutcome"
    issue, = outcome["issue"]
    assert issue["severity"] == "error" and issue["code"] == code and issue["diagnostics"]


def test_the_fronts_own_refusals_are_operation_outcomes(tmp_path: Path) -> None:
    _require_nginx()
    env = {"NMS_CDS_MAX_BODY_BYTES": "8192"}
    with serve(tmp_path, "--workers", "1", env=env) as served:
        port = served.port
        assert_outcome(*raw(port, b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n"), 405, "not-supported")
        assert_outcome(*raw(port, f"POST {HOOK_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 9000\r\n\r\n"
                            .encode()), 413, "too-costly")
        # paths that take no upload hold at most 4 KiB, in memory
        assert_outcome(*raw(port, b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"),
                       413, "too-costly")
        assert_outcome(*raw(port, b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"), 414, "too-long")
        assert_outcome(*raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"),
                       431, "too-long")
        assert_outcome(*raw(port, b"\x16\x03\x01 not http\r\n\r\n"), 400, "invalid")
        assert_outcome(*raw(port, b"GET /healthz HTTP/1.1\r\n\r\n"), 400, "invalid")  # no Host
        assert_outcome(*raw(port, f"POST {HOOK_PATH} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"
                            .encode()), 501, "not-supported")
        assert_outcome(*raw(port, b"GET /healthz HTTP/3.0\r\nHost: x\r\n\r\n"), 505, "not-supported")
        # the answers the service gives itself stay the service's (nginx intercepts none of them)
        assert requests.get(f"{served.base}/no-such-path", timeout=5).status_code == 404
        assert requests.get(f"{served.base}/healthz", timeout=5).json() == {"status": "ok"}
        # the internal locations cannot be reached from outside
        for path in ("/_nms_cds/auth", "/_nms_cds_error/503"):
            assert requests.get(f"{served.base}{path}", timeout=5).status_code == 404


def test_a_lost_or_silent_worker_is_an_operation_outcome(tmp_path: Path) -> None:
    """502 when the worker dies mid-request, 504 when it does not answer within the front's read timeout."""
    _require_nginx()
    env = {"NMS_CDS_REQUEST_TIMEOUT_SECONDS": "0.5"}  # the front waits 5.5 s for an answer
    with serve(tmp_path, "--workers", "1", "--timeout", "60", "--app", "tests.helpers.serving_apps:spinning_app",
               env=env) as served:
        pid = requests.get(f"{served.base}/test/pid", timeout=5).json()["pid"]
        answers: list[requests.Response] = []
        lost = threading.Thread(target=lambda: answers.append(requests.get(f"{served.base}/test/block",
                                                                          timeout=30)))
        lost.start()
        time.sleep(1.0)
        os.kill(pid, signal.SIGKILL)
        lost.join(timeout=30)
        response = answers[0]
        assert_outcome(response.status_code, response.headers, response.content, 502, "transient")
        assert response.headers["Retry-After"] == "5"
        deadline = time.monotonic() + 20
        while requests.get(f"{served.base}/healthz", timeout=5).status_code != 200:  # a new worker
            assert time.monotonic() < deadline
            time.sleep(0.2)
        started = time.monotonic()
        response = requests.get(f"{served.base}/test/block", timeout=30)
        assert 5.0 <= time.monotonic() - started <= 15
        assert_outcome(response.status_code, response.headers, response.content, 504, "timeout")


def test_every_status_nginx_answers_has_an_error_page() -> None:
    conf = front.nginx_conf(Settings(auth="off"), host="127.0.0.1", port=1, upstream=Path("/r/app.sock"),
                            runtime=Path("/r"))
    for status in (400, 401, 403, 404, 405, 408, 411, 413, 414, 416, 429, 431, 494, 500, 501, 502, 503, 504,
                   505):
        assert f"error_page {status} ={431 if status == 494 else status} /_nms_cds_error/{status};" in conf
        code, _ = front.FRONT_ANSWERS[status]
        assert code in ISSUE_TYPES
    for code, message in front.FRONT_ANSWERS.values():
        assert json.loads(front.outcome(code, message))["issue"][0]["code"] == code
    assert "return 431 " in conf and "return 494 " not in conf  # nginx's private 494 goes out as 431
    assert "client_body_in_file_only off;" in conf and "auth_request /_nms_cds/auth;" in conf


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_retryable_answers_say_when_to_retry(status: int) -> None:
    conf = front.nginx_conf(Settings(auth="off"), host="127.0.0.1", port=1, upstream=Path("/r/app.sock"),
                            runtime=Path("/r"))
    block = conf.split(f"location = /_nms_cds_error/{status} {{")[1].split("}")[0]
    assert "add_header Retry-After 5 always;" in block


def test_uploads_are_read_only_after_the_header_check_and_within_the_quota() -> None:
    settings = Settings(auth="off", front_max_uploads=7, max_body_bytes=5000, front_spool_dir=Path("/spool"))
    conf = front.nginx_conf(settings, host="127.0.0.1", port=1, upstream=Path("/r/app.sock"), runtime=Path("/r"))
    hooks = conf.split("location /cds-services/ {")[1].split("}")[0]
    assert "auth_request /_nms_cds/auth;" in hooks and "proxy_pass" not in hooks  # no body read here
    upload = conf.split("location @nms_cds_upload {")[1].split("}")[0]
    assert "limit_conn nms_cds_uploads 7;" in upload and "client_body_buffer_size 65536;" in upload
    other = conf.split("location / {")[1].split("}")[0]
    assert "client_max_body_size 4096;" in other  # in memory (client_body_buffer_size 4096), never spooled
    assert "client_body_temp_path /spool;" in conf and "client_max_body_size 5000;" in conf
    auth = conf.split("location = /_nms_cds/auth {")[1].split("}")[0]
    assert "internal;" in auth and "proxy_pass_request_body off;" in auth
