"""The CDS Hooks 2.0 HTTP surface: discovery, service calls, feedback, CORS and JSON errors."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from cds_service import feedback as feedback_items
from cds_service import metrics
from cds_service.errors import (
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    RequestError,
    ServiceOverrun,
    StoreUnavailable,
    Unauthorized,
)
from cds_service.hooks.request import load_json, parse_feedback, parse_hook_request, reject_lone_surrogates
from cds_service.openapi import openapi_document
from cds_service.runtime import Runtime
from cds_service.watchdog import GcPause, RequestWatchdog

bp = Blueprint("cds_hooks", __name__)
log = logging.getLogger("cds_service.http")
access_log = logging.getLogger("cds_service.access")


def runtime_of(app: Flask) -> Runtime:
    rt: Runtime = app.extensions["nms_cds"]
    return rt


def runtime() -> Runtime:
    rt: Runtime = current_app.extensions["nms_cds"]
    return rt


def _authenticate(path: str) -> None:
    rt = runtime()
    claims = rt.authenticator.verify(request.headers.get("Authorization"), rt.settings.public_base_url + path)
    if claims:
        g.iss = claims.get("iss")
        g.jti = claims.get("jti")


def _body() -> Any:
    rt = runtime()
    length = request.content_length
    if length is not None and length > rt.settings.max_body_bytes:
        raise PayloadTooLarge(f"request body larger than {rt.settings.max_body_bytes} bytes")
    try:
        data = request.get_data(cache=False)
    except RequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"request body larger than {rt.settings.max_body_bytes} bytes") from exc
    if len(data) > rt.settings.max_body_bytes:
        raise PayloadTooLarge(f"request body larger than {rt.settings.max_body_bytes} bytes")
    parsed = load_json(data, max_depth=rt.settings.max_json_depth)
    reject_lone_surrogates(data, parsed)
    return parsed


@bp.get("/cds-services")
def discovery() -> Response:
    _authenticate("/cds-services")
    rt = runtime()
    return jsonify({"services": [svc.definition() for svc in rt.services.values()]})


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    rt = runtime()
    service = rt.services.get(service_id)
    _authenticate(f"/cds-services/{service_id}")
    if service is None:
        raise NotFound(f"no CDS service with id '{service_id[:64]}'")
    hook_request = parse_hook_request(_body(), expected_hook=service.hook)
    g.hook_instance = hook_request.hook_instance
    response, report = service.call(hook_request)
    rt.audit_cards(response.get("cards", []), hook=service.hook, service_id=service_id,
                   hook_instance=hook_request.hook_instance, patient_id=hook_request.patient_id, report=report,
                   iss=g.get("iss"))
    extra: dict[str, Any] = {
        "event": "hook-call",
        "service": service_id,
        "prefetch": report.keys,
        "fhir_requests": report.fhir_requests,
        "fhir_server": report.fhir_server,
        "indicator": report.indicator or "none",
        "score": report.score,
        "timings_ms": {k: round(v, 1) for k, v in report.timings_ms.items()},
    }
    if rt.settings.log_patient_ids:
        extra["patient_id"] = hook_request.patient_id
    log.info("hook answered", extra=extra)
    metrics.observe_hook(service_id, service.hook, time.perf_counter() - g.started,
                         [str(card.get("indicator")) for card in response.get("cards", [])])
    return jsonify(response)


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    rt = runtime()
    _authenticate(f"/cds-services/{service_id}/feedback")
    if service_id not in rt.services:
        raise NotFound(f"no CDS service with id '{service_id[:64]}'")
    body = _body()
    feedback_items.check_limits(body, rt.settings)
    items = parse_feedback(body)
    # Stored (and "new" decided) in one transaction before the answer; StoreUnavailable → 503, nothing kept.
    new = rt.store.add_feedback(feedback_items.records(service_id, items, iss=g.get("iss"), now=rt.wall_clock()))
    rt.maybe_purge()
    log.info("feedback stored", extra={"event": "feedback", "service": service_id,
                                       "feedback_items": len(items), "feedback_new": new})
    return jsonify({"received": len(items), "new": new})


@bp.get("/healthz")
def health() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 document of this surface; unauthenticated, like /healthz."""
    rt = runtime()
    return jsonify(openapi_document(rt.settings, {sid: svc.hook for sid, svc in rt.services.items()}))


def _error_response(exc: RequestError) -> tuple[Response, int]:
    if isinstance(exc, Unauthorized):
        log.warning("unauthorized", extra={"event": "auth-failed", "reason": exc.reason,
                                          "iss": g.get("iss"), "jti": g.get("jti")})
        metrics.auth_failure(exc.reason)
        response = jsonify({"error": "unauthorized"})
        response.headers["WWW-Authenticate"] = 'Bearer realm="cds-services"'  # RFC 6750; no error detail
        return response, 401
    if isinstance(exc, PreconditionFailed):
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": exc.code, "diagnostics": exc.message}],
        }
        log.info("precondition failed", extra={"event": "precondition-failed", "error": exc.message})
        return jsonify(outcome), 412
    if isinstance(exc, ServiceOverrun):
        metrics.overrun()
        log.error("request overran NMS_CDS_REQUEST_TIMEOUT_SECONDS; stopped", extra={"event": "overrun"})
    body: dict[str, Any] = {"error": exc.code, "message": exc.message}
    if exc.field:
        body["field"] = exc.field
    log.info("request rejected", extra={"event": "bad-request", "status": exc.status, "error": exc.message})
    return jsonify(body), exc.status


def _store_error(exc: StoreUnavailable) -> tuple[Response, int]:
    log.error("store unavailable", extra={"event": "store-unavailable", "error": exc.cause})
    response = jsonify({"error": exc.code, "message": f"storage unavailable: {exc.cause}; nothing was stored, "
                        "send the same request again later"})
    response.headers["Retry-After"] = "5"
    return response, 503


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    status = exc.code or 500
    if status == 413:
        return _error_response(PayloadTooLarge("request body too large"))
    names = {404: "not-found", 405: "method-not-allowed", 400: "invalid"}
    return jsonify({"error": names.get(status, "error"), "message": exc.description or exc.name}), status


def _unexpected(exc: Exception) -> tuple[Response, int]:
    log.error("unexpected error", extra={"event": "internal-error", "error": type(exc).__name__})
    return jsonify({"error": "internal", "message": "internal error; see the service log"}), 500


def _start() -> None:
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
    rt = runtime()
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
    app.register_blueprint(bp)
    app.register_blueprint(metrics.bp)
    app.extensions["nms_cds_watchdog"] = RequestWatchdog(runtime_of(app).settings.request_timeout_seconds)
    app.extensions["nms_cds_gc_pause"] = GcPause()
    app.before_request(_start)
    app.after_request(_access)
    app.after_request(_cors)
    app.after_request(_view_done)  # after-request functions run last-registered first
    app.teardown_request(_disarm)
    app.register_error_handler(RequestError, _error_response)
    app.register_error_handler(StoreUnavailable, _store_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
