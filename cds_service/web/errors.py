"""Error answers, every one a FHIR OperationOutcome (:mod:`cds_service.protocol.outcome`): a
:class:`cds_service.errors.RequestError` as its status (``expression`` naming the offending member), 401 without
detail, 412 with what failed per prefetch key, a broken store as 503 with Retry-After, and anything unexpected as
a bare 500 (the details go to the log only)."""

from __future__ import annotations

import logging

from flask import Flask, Response, g, jsonify
from werkzeug.exceptions import HTTPException

from cds_service import metrics
from cds_service.errors import (
    PayloadTooLarge,
    PreconditionFailed,
    QuotaExceeded,
    RequestError,
    ServiceOverrun,
    StoreUnavailable,
    Unauthorized,
)
from cds_service.protocol.outcome import operation_outcome

log = logging.getLogger("cds_service.http")


def _error_response(exc: RequestError) -> tuple[Response, int]:
    if isinstance(exc, Unauthorized):
        log.warning("unauthorized", extra={"event": "auth-failed", "reason": exc.reason,
                                          "iss": g.get("iss"), "jti": g.get("jti")})
        metrics.auth_failure(exc.reason)
        response = jsonify(operation_outcome(401, "unauthorized"))
        response.headers["WWW-Authenticate"] = 'Bearer realm="cds-services"'  # RFC 6750; no error detail
        return response, 401
    if isinstance(exc, PreconditionFailed):
        outcome = operation_outcome(412, exc.message, code=exc.code)
        log.info("precondition failed", extra={"event": "precondition-failed", "error": exc.message})
        return jsonify(outcome), 412
    if isinstance(exc, ServiceOverrun):
        metrics.overrun()
        log.error("request overran NMS_CDS_REQUEST_TIMEOUT_SECONDS; stopped", extra={"event": "overrun"})
    body = operation_outcome(exc.status, exc.message, code=exc.code, expression=exc.field)
    log.info("request rejected", extra={"event": "bad-request", "status": exc.status, "error": exc.message})
    response = jsonify(body)
    if isinstance(exc, QuotaExceeded):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response, exc.status


def _store_error(exc: StoreUnavailable) -> tuple[Response, int]:
    log.error("store unavailable", extra={"event": "store-unavailable", "error": exc.cause})
    response = jsonify(operation_outcome(503, f"storage unavailable: {exc.cause}; nothing was stored, "
                                         "send the same request again later", code="transient"))
    response.headers["Retry-After"] = "5"
    return response, 503


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    status = exc.code or 500
    if status == 413:
        return _error_response(PayloadTooLarge("request body too large"))
    response = jsonify(operation_outcome(status, exc.description or exc.name))
    sent = dict(exc.get_headers())
    for name in ("Allow", "Retry-After", "WWW-Authenticate"):  # what the HTTP exception would have sent
        if name in sent:
            response.headers[name] = sent[name]
    return response, status


def _unexpected(exc: Exception) -> tuple[Response, int]:
    log.error("unexpected error", extra={"event": "internal-error", "error": type(exc).__name__})
    return jsonify(operation_outcome(500, "internal error; see the service log")), 500


def register(app: Flask) -> None:
    app.register_error_handler(RequestError, _error_response)
    app.register_error_handler(StoreUnavailable, _store_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
