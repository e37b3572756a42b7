"""The Prometheus counters the request middleware, the FHIR client and the services update (the ``/metrics``
and ``/readyz`` routes are :mod:`cds_service.web.ops`).

Metrics use the official ``prometheus_client``. Under ``nms-cds serve`` every gunicorn worker is its own
process, so ``serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` (emptied at start) before any worker starts and
:func:`exposition` aggregates all workers' files with ``MultiProcessCollector``. ``prometheus_client`` fixes its
value class when it is first imported, so it is imported lazily here, on the first metric update or scrape
in a worker, never in the gunicorn master.

Label values are bounded sets (route templates, status codes, outcome and reason categories):
never ids, tokens or patient data.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from cds_service.errors import (
    FhirAuthError,
    FhirBadResponse,
    FhirConnectionError,
    FhirError,
    FhirHttpError,
    FhirNotAllowed,
    FhirNotFound,
    FhirTimeout,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0)

_lock = threading.Lock()
_metrics: dict[str, Any] = {}


def _m() -> dict[str, Any]:
    """The metric objects, created on first use (see the module docstring for why not at import)."""
    if _metrics:
        return _metrics
    with _lock:
        if not _metrics:
            from prometheus_client import Counter, Gauge, Histogram

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
                suppressed=Counter("nms_cds_cards_suppressed",
                                   "Cards not shown again within the quiet period, by service and hook",
                                   ["service", "hook"]),
                quiet_failures=Counter("nms_cds_quiet_store_failures",
                                       "Quiet-period look-ups that failed: the card was shown (fail open)",
                                       ["hook"]),
                silent_cards=Counter("nms_cds_silent_cards",
                                     "Cards evaluated and audited but not returned (silent mode), by service, hook "
                                     "and indicator", ["service", "hook", "indicator"]),
                # 1 for the knowledge version in effect (package version + site file hash), as an info metric
                knowledge=Gauge("nms_cds_knowledge_info", "The knowledge the rules run with (value 1)", ["version"],
                                multiprocess_mode="max"),
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


def card_suppressed(service: str, hook: str) -> None:
    _m()["suppressed"].labels(service, hook).inc()


def quiet_store_failure(hook: str) -> None:
    _m()["quiet_failures"].labels(hook).inc()


def silent_cards(service: str, hook: str, indicators: list[str]) -> None:
    """Cards a silent-mode client would have been shown (audited, not returned)."""
    m = _m()
    for indicator in indicators:
        m["silent_cards"].labels(service, hook, indicator).inc()


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


_knowledge_shown: list[str] = []


def knowledge(version: str) -> None:
    """``nms_cds_knowledge_info{version=...} 1`` for the knowledge in effect (any other version shown before: 0)."""
    gauge = _m()["knowledge"]
    with _lock:
        for old in _knowledge_shown:
            if old != version:
                gauge.labels(old).set(0)
        if version not in _knowledge_shown:
            _knowledge_shown.append(version)
    gauge.labels(version).set(1)


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


def exposition() -> tuple[bytes, str]:
    """The text exposition of every metric (all workers' under ``serve``) and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    _m()
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
