"""JSON-only output of the serving processes: one pipe for the master, workers and nginx; gunicorn's logger."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time
from typing import IO, Any

from cds_service.printable import printable

# --- JSON-only output ---------------------------------------------------------------------------------------

_NGINX_LINE = re.compile(rb"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(\w+)\] \d+#\d+: (?:\*\d+ )?(.*)$")
_NGINX_LEVELS = {b"emerg": "critical", b"alert": "critical", b"crit": "critical", b"error": "error",
                 b"warn": "warning", b"notice": "info", b"info": "info", b"debug": "debug"}
_MAX_TEXT = 1000


def _record(level: str, logger: str, msg: str, **extra: Any) -> bytes:
    now = time.time()
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    # ensure_ascii=False keeps text readable; C1 controls and bidi overrides would then pass raw: escaped here
    payload = {"ts": ts, "level": level, "logger": logger, "msg": printable(msg[:_MAX_TEXT]),
               **{k: printable(v) if isinstance(v, str) else v for k, v in extra.items()}}
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

