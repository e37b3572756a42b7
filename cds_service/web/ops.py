"""Operations routes: liveness (``/healthz``), readiness (``/readyz``), Prometheus metrics (``/metrics``) and
the OpenAPI document (``/openapi.json``). None takes a CDS client JWT.

Access to ``/metrics``: ``Authorization: Bearer <NMS_CDS_METRICS_TOKEN>`` (a static scrape token; CDS client
JWTs are not meant for Prometheus). Without a token it is off (404) in production and open in development.
"""

from __future__ import annotations

import hmac
import os
import tempfile
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from cds_service import metrics
from cds_service.errors import StoreUnavailable
from cds_service.protocol.openapi import openapi_document
from cds_service.protocol.outcome import operation_outcome, outcome_issues
from cds_service.web.guards import runtime

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def health() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 document of this surface; unauthenticated, like /healthz."""
    rt = runtime()
    return jsonify(openapi_document(rt.settings, {sid: svc.hook for sid, svc in rt.services.items()}))


def readiness(rt: Any) -> list[str]:
    """What keeps this worker from serving calls; empty when ready.

    Checks the configuration (built at start: the runtime exists), the trusted clients in JWT mode (loaded,
    file still readable) and the runtime's ``store`` and ``replay`` guard (when it is a separate backend, e.g.
    Redis): ``ping()`` raising or returning ``False`` is not ready. No store: nothing to check. The file systems
    of the data directory and of the temporary directory must have ``NMS_CDS_MIN_FREE_DISK_BYTES`` free.
    """
    problems: list[str] = []
    settings = rt.settings
    if settings.auth.value == "jwt":
        if not rt.authenticator.clients:
            problems.append("no trusted clients loaded")
        path = settings.trusted_clients
        if path is not None and not os.path.isfile(path):
            problems.append("trusted clients file is not readable")
    problems.extend(low_disk(settings))
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


def low_disk(settings: Any) -> list[str]:
    """A problem per directory (the store's, the temporary one) whose file system is below the free-space floor."""
    floor = int(settings.min_free_disk_bytes)
    if floor <= 0:
        return []
    problems = []
    for name, path in (("data directory", settings.data_dir), ("temporary directory", tempfile.gettempdir())):
        try:
            st = os.statvfs(path)
        except OSError:
            continue  # a missing data directory is the store's problem, reported by its ping
        free = st.f_bavail * st.f_frsize
        if free < floor:
            problems.append(f"{name}: {free // (1024 * 1024)} MiB free, below the {floor // (1024 * 1024)} MiB floor")
    return problems


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


@bp.get("/metrics", endpoint="metrics")
def metrics_text() -> Response | tuple[Response, int]:
    allowed, status = _metrics_allowed()
    if not allowed:
        if status == 404:
            return jsonify(operation_outcome(404, "metrics are off: set NMS_CDS_METRICS_TOKEN")), 404
        response = jsonify(operation_outcome(401, "unauthorized"))
        response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response, 401
    metrics.knowledge(current_app.extensions["nms_cds"].knowledge.version)
    body, content_type = metrics.exposition()
    return Response(body, status=200, mimetype=None, content_type=content_type)


@bp.get("/readyz")
def ready() -> tuple[Response, int]:
    problems = readiness(current_app.extensions["nms_cds"])
    if problems:
        return jsonify(outcome_issues(503, problems)), 503
    return jsonify({"status": "ready"}), 200
