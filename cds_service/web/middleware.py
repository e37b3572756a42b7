"""Per-request plumbing around every route: the request id, the watchdog and GC pause, one access log line
with the request metrics, and CORS."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, current_app, g, request

from cds_service import metrics
from cds_service.clinical import valuesets
from cds_service.watchdog import GcPause, RequestWatchdog
from cds_service.web import guards

log = logging.getLogger("cds_service.http")
access_log = logging.getLogger("cds_service.access")


def _start() -> None:
    g.knowledge_token = valuesets.activate(guards.runtime().knowledge.site)  # the site file's knowledge, read once
    current_app.extensions["nms_cds_gc_pause"].enter()
    g.gc_paused = True
    g.request_id = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex
    g.started = time.perf_counter()
    current_app.extensions["nms_cds_watchdog"].arm()


_METHODS = frozenset({"GET", "POST", "OPTIONS", "HEAD", "PUT", "DELETE", "PATCH"})
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-]{1,100}(:[0-9]{1,5})?")


def _access(response: Response) -> Response:
    """One JSON access line and the request metrics per request (route template, never the raw path)."""
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    method = request.method if request.method in _METHODS else "other"
    seconds = time.perf_counter() - g.get("started", time.perf_counter())
    access_log.info("request", extra={"event": "access", "method": method, "route": route,
                                      "status": response.status_code, "duration_ms": round(seconds * 1000, 1)})
    metrics.observe_request(method, route, response.status_code, seconds)
    return response


def _disarm(exc: BaseException | None) -> None:
    token = g.pop("knowledge_token", None)
    if token is not None:
        valuesets.deactivate(token)
    current_app.extensions["nms_cds_watchdog"].disarm()
    if g.pop("gc_paused", False):
        current_app.extensions["nms_cds_gc_pause"].exit()


def _view_done(response: Response) -> Response:
    """The first after-request step (registered last): the request's own work is over."""
    current_app.extensions["nms_cds_watchdog"].disarm()
    return response


def _origin_label(origin: str) -> str:
    return origin if _ORIGIN.fullmatch(origin) else "malformed"


def _cors(response: Response) -> Response:
    rt = guards.runtime()
    origin = request.headers.get("Origin")
    allowed = rt.settings.cors_origins
    if rt.settings.is_development or "*" in allowed:
        response.headers["Access-Control-Allow-Origin"] = "*"
    elif origin and origin in allowed:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
        if request.method == "OPTIONS":
            log.info("CORS preflight", extra={"event": "cors-preflight", "origin": _origin_label(origin),
                                              "allowed": True})
    elif origin:
        log.info("CORS origin refused", extra={"event": "cors-refused", "origin": _origin_label(origin),
                                               "method": request.method if request.method in _METHODS else "other"})
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, Accept, X-Request-Id"
    response.headers["Access-Control-Max-Age"] = "600"
    response.headers["X-Request-Id"] = g.get("request_id", "")
    response.headers["Cache-Control"] = "no-store"
    return response


def register(app: Flask) -> None:
    app.extensions["nms_cds_watchdog"] = RequestWatchdog(guards.runtime_of(app).settings.request_timeout_seconds)
    app.extensions["nms_cds_gc_pause"] = GcPause()
    app.before_request(_start)
    app.after_request(_access)
    app.after_request(_cors)
    app.after_request(_view_done)  # after-request functions run last-registered first
    app.teardown_request(_disarm)
