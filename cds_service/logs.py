"""Structured logging: one JSON object per line on stderr.

Only fields that are safe by construction are emitted: the message, the logger, the level, the
request id and hookInstance of the current request, and the whitelisted ``extra`` keys below; every control
character is escaped (a log line cannot carry a terminal escape sequence). Tokens,
JWTs, resource content and patient identifiers are never passed to the logger (a test checks it).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any

from flask import g, has_request_context

SAFE_EXTRA = (
    "event", "request_id", "hook_instance", "service", "status", "method", "path", "duration_ms",
    "prefetch", "fhir_requests", "fhir_server", "indicator", "score", "timings_ms", "iss", "jti",
    "reason", "error", "feedback_items", "feedback_new", "patient_id", "tenant", "remote",
    "route", "origin", "allowed", "problems", "front", "workers", "threads", "bind", "mode",
    "suppressed", "card", "answered_card", "until",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in SAFE_EXTRA:
            value = getattr(record, key, None)
            if value is not None:
                payload[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            payload["exception"] = record.exc_info[0].__name__
        # ensure_ascii escapes C0, C1 and every non-ASCII character; DEL is the one control it leaves raw
        return json.dumps(payload, separators=(",", ":"), default=str).replace("\x7f", "\\u007f")


class RequestContextFilter(logging.Filter):
    """Stamp ``request_id`` and ``hook_instance`` of the current Flask request on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if has_request_context():
            for key in ("request_id", "hook_instance"):
                if getattr(record, key, None) is None:
                    setattr(record, key, g.get(key))
        return True


class _NotOurs(logging.Filter):
    """For the root handler: records of loggers that have their own JSON handler are printed there."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(("cds_service", "gunicorn"))


def _json_handler(record_filter: logging.Filter) -> logging.Handler:
    """A stderr handler printing JSON lines, marked as ours so that configuring twice adds nothing."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(record_filter)
    handler._nms_cds = True  # type: ignore[attr-defined]
    return handler


def _has_json_handler(logger: logging.Logger) -> bool:
    return any(getattr(h, "_nms_cds", False) for h in logger.handlers)


def configure_process(level: str = "WARNING") -> None:
    """For server processes (``nms-cds serve``): every other logger, Python warnings and uncaught exceptions
    (main thread and other threads) become JSON lines too, tracebacks as the exception type only."""
    root = logging.getLogger()
    if not _has_json_handler(root):
        root.addHandler(_json_handler(_NotOurs()))
        root.setLevel(level.upper())
    logging.captureWarnings(True)
    crash = logging.getLogger("cds_service.crash")

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is not SystemExit and args.exc_value is not None:
            crash.error("uncaught exception in a thread", extra={"event": "uncaught-exception"},
                        exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    def main_hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        crash.error("uncaught exception", extra={"event": "uncaught-exception"}, exc_info=(exc_type, exc, tb))

    threading.excepthook = thread_hook
    sys.excepthook = main_hook


def configure(level: str = "INFO") -> None:
    """Install the JSON handler on the package logger (idempotent)."""
    logger = logging.getLogger("cds_service")
    logger.setLevel(level.upper())
    if not _has_json_handler(logger):
        logger.addHandler(_json_handler(RequestContextFilter()))
    logger.propagate = True
