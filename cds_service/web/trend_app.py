"""The SMART on FHIR trend view under ``/app/``: its static pages, its launch settings and its assessment API.

``launch.html`` does the SMART App Launch 2 (EHR launch with ``iss`` + ``launch``, or standalone with ``iss``;
public client with PKCE, by the vendored ``fhirclient`` library); ``index.html`` draws what
``POST /app/api/assessment`` returns: the patient-view engine's assessment of the record read from the EHR's
FHIR server with the SMART access token (one source of truth: no rules in JavaScript). The token is used for
that one request's FHIR reads and is never logged or kept. Every answer under ``/app/`` carries a
Content-Security-Policy that allows scripts and styles from this service only.
"""

from __future__ import annotations

import logging
import re
from importlib import resources
from typing import Any

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.exceptions import NotFound as HttpNotFound

from cds_service.config import Settings
from cds_service.errors import BadRequest, FhirNotAllowed, Unauthorized
from cds_service.fhir.client import check_base
from cds_service.net.urls import parse_allowlist_entry
from cds_service.services import trend
from cds_service.web import guards

bp = Blueprint("trend_app", __name__, url_prefix="/app")
log = logging.getLogger("cds_service.http")

STATIC = resources.files("cds_service.web").joinpath("static", "app")
_FILE = re.compile(r"^(?:vendor/)?[A-Za-z0-9][A-Za-z0-9._-]{0,80}\.(?:html|js|css)$")
_TYPES = {"html": "text/html; charset=utf-8", "js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8"}
_PATIENT = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")  # a FHIR id
_BEARER = re.compile(r"^Bearer ([\x21-\x7e]{1,8192})$")


def _origins() -> list[str]:
    settings = guards.runtime().settings
    origins = [parse_allowlist_entry(entry).origin for entry in settings.fhir_allowlist]
    return list(dict.fromkeys([*origins, *settings.smart_auth_origins]))


def _open_server(base: str, settings: Settings) -> bool:
    """Whether ``base`` is the development mode's open FHIR server (read without a token)."""
    if not settings.is_development or settings.smart_open_fhir_server is None:
        return False
    try:
        return base == str(check_base(settings.smart_open_fhir_server, settings))
    except FhirNotAllowed:  # not within the allowlist: never read
        return False


def _csp(response: Response) -> Response:
    """Scripts, styles and images from this service only; the page may call the allowed FHIR servers and
    authorization servers (discovery and the token exchange); any EHR may frame it."""
    connect = " ".join(["'self'", *_origins()])
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src {connect}; "
        "base-uri 'none'; form-action 'self'; frame-ancestors *")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"  # the launch code and state stay out of Referer
    return response


bp.after_request(_csp)


@bp.get("/")
@bp.get("/<path:name>")
def static_file(name: str = "index.html") -> Response:
    if name in ("api/assessment", "api/config"):  # a route of its own, asked with another method
        raise MethodNotAllowed()
    if not _FILE.fullmatch(name):
        raise HttpNotFound()
    item = STATIC.joinpath(*name.split("/"))
    if not item.is_file():
        raise HttpNotFound()
    return Response(item.read_bytes(), mimetype=_TYPES[name.rsplit(".", 1)[1]])


@bp.get("/api/config")
def config() -> Response:
    """What launch.html needs: the client id and scopes, and in development the open FHIR server."""
    settings = guards.runtime().settings
    return jsonify({"clientId": settings.smart_client_id, "scope": settings.smart_scope,
                    "openFhirServer": settings.smart_open_fhir_server if settings.is_development else None})


def _token() -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    match = _BEARER.fullmatch(header.strip())
    if match is None:
        raise Unauthorized("trend view: malformed Authorization header")
    return match.group(1)


@bp.post("/api/assessment")
def assessment() -> Response:
    """``{"fhirServer", "patient"}`` with the SMART access token as ``Authorization: Bearer``: the assessment
    of that patient from that server (within NMS_CDS_FHIR_ALLOWLIST) as :mod:`cds_service.services.trend`
    gives it. Without a token only the development mode's open FHIR server is read."""
    rt = guards.runtime()
    body: Any = guards.body()
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object with fhirServer and patient")
    server, patient = body.get("fhirServer"), body.get("patient")
    if not isinstance(server, str) or not server:
        raise BadRequest("fhirServer must be the FHIR base URL (the launch's iss)", field="fhirServer")
    if not isinstance(patient, str) or not _PATIENT.fullmatch(patient):
        raise BadRequest("patient must be a FHIR id", field="patient")
    try:
        base = str(check_base(server, rt.settings))
    except FhirNotAllowed as exc:  # the message names the rule, never the URL
        raise BadRequest(exc.message, field="fhirServer") from None
    token = _token()
    if token is None and not _open_server(base, rt.settings):
        raise Unauthorized("trend view: no SMART access token")
    policy = rt.services[rt.settings.patient_view_service_id].policy
    engine = rt.services[rt.settings.patient_view_service_id].engine
    answer = trend.assessment(engine, policy, trend.TrendRequest(base, patient, token))
    log.info("trend view answered", extra={"event": "trend-view", "indicator": answer["indicator"] or "none",
                                           "fhir_server": "allowed", "smart_token": token is not None})
    answer["patient"] = patient
    answer["fhirServer"] = base
    return jsonify(answer)
