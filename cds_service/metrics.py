"""Operations surface: Prometheus metrics (``GET /metrics``), readiness (``GET /readyz``) and the counters
the request hooks, the FHIR client and the services update.

Metrics use the official ``prometheus_client``. Under ``nms-cds serve`` every gunicorn worker is its own
process, so ``serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` (emptied at start) before any worker starts and
``/metrics`` aggregates all workers' files with ``MultiProcessCollector``. ``prometheus_client`` fixes its
value class when it is first imported, so it is imported lazily here, on the first metric update or scrape
in a worker, never in the gunicorn master.

Access: ``/metrics`` needs ``Authorization: Bearer <NMS_CDS_METRICS_TOKEN>`` (a static scrape token; CDS
client JWTs are not meant for Prometheus). Without a token it is off (404) in production and open in
development. Label values are bounded sets (route templates, status codes, outcome and reason categories):
never ids, tokens or patient data.
"""

from __future__ import annotations

import functools
import hmac
import os
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from flask import Blueprint, Response, current_app, jsonify, request

from cds_service.errors import (
    FhirAuthError,
    FhirBadResponse,
    FhirConnectionError,
    FhirError,
    FhirHttpError,
    FhirNotAllowed,
    FhirNotFound,
    FhirTimeout,
    StoreUnavailable,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0)

bp = Blueprint("ops", __name__)

_lock = threading.Lock()
_metrics: dict[str, Any] = {}


def _m() -> dict[str, Any]:
    """The metric objects, created on first use (see the module docstring for why not at import)."""
    if _metrics:
        return _metrics
    with _lock:
        if not _metrics:
            from prometheus_client import Counter, Histogram

            _metrics.update(
                requests=Counter("nms_cds_http_requests", "HTTP requests answered by the application",
                                 ["method", "route", "status"]),
                request_seconds=Histogram("nms_cds_http_request_duration_seconds",
                                          "Time from request start to response, by route", ["route"],
                                          buckets=LATENCY_BUCKETS),
                hook_seconds=Histogram("nms_cds_hook_duration_seconds",
                                       "Hook call latency (parse, FHIR work, assessment, cards)",
                                       ["service", "hook"], buckets=LATENCY_BUCKETS),
                fhir=Counter("nms_cds_fhir_requests", "Outbound FHIR GETs by outcome", ["outcome"]),
                cards=Counter("nms_cds_cards", "Cards returned, by service, hook and indicator",
                              ["service", "hook", "indicator"]),
                auth_failures=Counter("nms_cds_auth_failures", "Refused CDS client authentications by reason",
                                      ["reason"]),
                unreadable=Counter("nms_cds_unreadable_resources",
                                   "FHIR resources that could not be read, by kind and reason (bounded labels)",
                                   ["kind", "reason"]),
                overruns=Counter("nms_cds_request_overruns",
                                 "Requests stopped at NMS_CDS_REQUEST_TIMEOUT_SECONDS (answered 503)"),
            )
    return _metrics


# --- updates ------------------------------------------------------------------------------------------------

def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    m = _m()
    m["requests"].labels(method, route, str(status)).inc()
    m["request_seconds"].labels(route).observe(seconds)


def observe_hook(service: str, hook: str, seconds: float, indicators: list[str]) -> None:
    m = _m()
    m["hook_seconds"].labels(service, hook).observe(seconds)
    for indicator in indicators:
        m["cards"].labels(service, hook, indicator).inc()


_REASON_CUT = re.compile(r"[:'\"(\[{].*$", re.DOTALL)


def reason_label(reason: str) -> str:
    """A bounded label for an auth failure reason: the fixed text before any quoted or variable part."""
    label = _REASON_CUT.sub("", reason).strip().lower()
    label = re.sub(r"[^a-z0-9]+", "-", label).strip("-")
    return label[:48] or "other"


def auth_failure(reason: str) -> None:
    _m()["auth_failures"].labels(reason_label(reason)).inc()


def unreadable_resources(counts: Mapping[tuple[str, str], int]) -> None:
    """Count what one call could not read, by (kind, reason): bounded labels (``Extracted.unread_labels``)."""
    for (kind, reason), n in counts.items():
        if n > 0:
            _m()["unreadable"].labels(kind, reason).inc(n)


def overrun() -> None:
    _m()["overruns"].inc()


def fhir_outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    for cls, name in ((FhirTimeout, "timeout"), (FhirConnectionError, "connection-error"),
                      (FhirNotAllowed, "not-allowed"), (FhirAuthError, "http-401-403"),
                      (FhirNotFound, "http-404"), (FhirBadResponse, "bad-response")):
        if isinstance(exc, cls):
            return name
    if isinstance(exc, FhirHttpError):
        return "http-5xx" if exc.status >= 500 else "http-other"
    return "fhir-error" if isinstance(exc, FhirError) else "internal-error"


F = TypeVar("F", bound=Callable[..., Any])


def count_fhir_call(func: F) -> F:
    """Decorator for the FHIR client's one GET entry point: one count per call, labelled by outcome."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            _m()["fhir"].labels(fhir_outcome(exc)).inc()
            raise
        _m()["fhir"].labels("ok").inc()
        return result

    return wrapper  # type: ignore[return-value]


# --- readiness ----------------------------------------------------------------------------------------------

def readiness(rt: Any) -> list[str]:
    """What keeps this worker from serving calls; empty when ready.

    Checks the configuration (built at start: the runtime exists), the trusted clients in JWT mode (loaded,
    file still readable) and the runtime's ``store`` and ``replay`` guard (when it is a separate backend, e.g.
    Redis): ``ping()`` raising or returning ``False`` is not ready. No store: nothing to check.
    """
    problems: list[str] = []
    settings = rt.settings
    if settings.auth.value == "jwt":
        if not rt.authenticator.clients:
            problems.append("no trusted clients loaded")
        path = settings.trusted_clients
        if path is not None and not os.path.isfile(path):
            problems.append("trusted clients file is not readable")
    store = getattr(rt, "store", None)
    replay = getattr(rt, "replay", None)
    for name, backend in (("store", store), ("replay guard", replay if replay is not store else None)):
        ping = getattr(backend, "ping", None)
        if not callable(ping):
            continue
        try:
            if ping() is False:
                problems.append(f"{name} not usable")
        except StoreUnavailable as exc:  # its cause is safe to return by contract (no path, URL or secret)
            problems.append(f"{name} not usable: {exc.cause}")
        except Exception as exc:  # any other failure: the type only
            problems.append(f"{name} not usable ({type(exc).__name__})")
    return problems


# --- routes -------------------------------------------------------------------------------------------------

def _metrics_allowed() -> tuple[bool, int]:
    settings = current_app.extensions["nms_cds"].settings
    token = settings.metrics_token
    if token is None:
        return (True, 200) if settings.is_development else (False, 404)
    given = request.headers.get("Authorization", "")
    expected = "Bearer " + token.get_secret_value()
    if hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8")):
        return True, 200
    return False, 401


@bp.get("/metrics")
def metrics() -> Response | tuple[Response, int]:
    allowed, status = _metrics_allowed()
    if not allowed:
        if status == 404:
            return jsonify({"error": "not-found", "message": "metrics are off: set NMS_CDS_METRICS_TOKEN"}), 404
        response = jsonify({"error": "unauthorized"})
        response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response, 401
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    _m()
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    return Response(body, status=200, mimetype=None, content_type=CONTENT_TYPE_LATEST)


@bp.get("/readyz")
def ready() -> tuple[Response, int]:
    problems = readiness(current_app.extensions["nms_cds"])
    if problems:
        return jsonify({"status": "not-ready", "problems": problems}), 503
    return jsonify({"status": "ready"}), 200


def openapi_paths(public: list[Any]) -> dict[str, Any]:
    """The two routes above for the OpenAPI document (merged into its ``paths``)."""

    def error(description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": {"type": "object"}}}}

    return {
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text format); bearer NMS_CDS_METRICS_TOKEN, off without one",
                "security": public,
                "responses": {
                    "200": {"description": "Prometheus text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "401": error("Wrong or missing metrics token"),
                    "404": error("Metrics off (no NMS_CDS_METRICS_TOKEN in production)"),
                },
            },
        },
        "/readyz": {
            "get": {
                "operationId": "ready",
                "summary": "Readiness: configuration, trusted clients and the store (when configured) usable",
                "security": public,
                "responses": {
                    "200": {"description": "Ready", "content": {"application/json": {"schema": {
                        "type": "object", "required": ["status"], "properties": {"status": {"const": "ready"}}}}}},
                    "503": {"description": "Not ready; `problems` says why", "content": {"application/json": {
                        "schema": {"type": "object", "required": ["status", "problems"],
                                   "properties": {"status": {"const": "not-ready"},
                                                  "problems": {"type": "array", "items": {"type": "string"}}}}}}},
                },
            },
        },
    }
