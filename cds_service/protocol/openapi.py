"""The OpenAPI 3.1 document of the HTTP surface, served at ``GET /openapi.json``.

It describes exactly the routes of :mod:`cds_service.web` (``tests/protocol/test_openapi.py`` keeps
the two in sync). The body schemas are not written here: they are the JSON Schemas of the typed wire models
in :mod:`cds_service.protocol.models`, the same models that validate the requests, so they describe the bodies as
the service reads and writes them: strict where the service is strict
(the REQUIRED CDS Hooks fields and their types, FHIR ids, the 128-character ``hookInstance``), lenient
where the service is deliberately lenient (extra members, prefetch values of any shape, Bundle entries
that are not objects are ignored). Error bodies are the ones :mod:`cds_service.web.errors` builds: a FHIR
``OperationOutcome`` for every status (:mod:`cds_service.protocol.outcome`; 401 with no detail on purpose).

The document depends on the settings only where the deployment does: the service ids, the public base
URL, the body limits, and whether JWT authentication is on (``security`` is declared only then).
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

from cds_service import __version__
from cds_service.config import AuthMode, Settings
from cds_service.protocol import models

JSON = "application/json"
OPENAPI_VERSION = "3.1.0"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}},
        "content": {JSON: {"schema": schema}},
    }


def service_hooks(settings: Settings) -> dict[str, str]:
    """Service id → hook, in discovery order (the same ids :class:`cds_service.runtime.Runtime` serves)."""
    return {settings.patient_view_service_id: "patient-view", settings.order_select_service_id: "order-select",
            settings.service_id: "order-sign"}


def _tidy(schema: Any) -> Any:
    """Drop what pydantic adds for Python's sake: generated titles and ``default: null`` of omitted members."""
    if isinstance(schema, dict):
        return {k: _tidy(v) for k, v in schema.items()
                if not (k == "title" and isinstance(v, str)) and not (k == "default" and v is None)}
    if isinstance(schema, list):
        return [_tidy(v) for v in schema]
    return schema


@cache
def _model_schemas() -> dict[str, Any]:
    _, top = models_json_schema([(m, "validation") for m in models.SCHEMA_MODELS],
                                ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = _tidy(top["$defs"])
    return schemas


def _schemas(hooks: list[str]) -> dict[str, Any]:
    """Every component schema, from the typed wire models; ``HookRequest`` is one of the served hooks'."""
    schemas = copy.deepcopy(_model_schemas())
    names = {hook: models.REQUEST_MODELS[hook].__name__ for hook in hooks}
    for hook, model in models.REQUEST_MODELS.items():
        if hook not in names:
            schemas.pop(model.__name__, None)
    schemas["HookRequest"] = {"description": "CDS Hooks 2.0 service request of one of the served hooks (the "
                                             "request's hook must be the called service's)",
                              "oneOf": [_ref(name) for name in names.values()]}
    return schemas


def _errors(settings: Settings, *statuses: int) -> dict[str, Any]:
    limit = settings.max_body_bytes
    texts = {
        400: ("Malformed request: not JSON, not UTF-8, nesting deeper than "
              f"{settings.max_json_depth} levels, or a REQUIRED member missing or mistyped", "OperationOutcome"),
        401: ("JWT missing or invalid (only when NMS_CDS_AUTH=jwt)", "OperationOutcome"),
        404: ("No CDS service with this id", "OperationOutcome"),
        412: ("Required FHIR data (temperatures, vital signs and laboratory results all failed) could be had "
              "neither from prefetch nor from fhirServer", "OperationOutcome"),
        413: (f"Request body larger than {limit} bytes (NMS_CDS_MAX_BODY_BYTES) or holding more than "
              f"{settings.max_json_items} JSON values (NMS_CDS_MAX_JSON_ITEMS); for feedback also more than "
              f"{settings.feedback_max_items} items or an item over {settings.feedback_max_item_bytes} bytes",
              "OperationOutcome"),
        429: ("This client's feedback quota (NMS_CDS_FEEDBACK_QUOTA_PER_HOUR, NMS_CDS_FEEDBACK_QUOTA_TOTAL) is used "
              "up; nothing was stored: send again after Retry-After seconds", "OperationOutcome"),
        503: ("The store (database or Redis) could not be used; `diagnostics` names the cause. Nothing was stored: "
              "send the same request again (Retry-After)", "OperationOutcome"),
    }
    return {str(s): _json(_ref(texts[s][1]), texts[s][0]) for s in statuses}


def _ops_paths(public: list[Any]) -> dict[str, Any]:
    """``/metrics`` and ``/readyz`` (:mod:`cds_service.web.ops`), merged into the document's ``paths``."""

    def error(description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": _ref("OperationOutcome")}}}

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
                    "503": error("Not ready; one issue per problem, its `diagnostics` says why"),
                },
            },
        },
    }


def _app_paths(settings: Settings, public: list[Any]) -> dict[str, Any]:
    """The SMART trend view under ``/app/`` (:mod:`cds_service.web.trend_app`, docs/trend-view.md)."""
    page = {"description": "A page, script or style of the trend view (Content-Security-Policy: self only)",
            "content": {"text/html": {"schema": {"type": "string"}}, "text/javascript": {"schema": {"type": "string"}},
                        "text/css": {"schema": {"type": "string"}}}}
    missing = {"description": "No such file", "content": {JSON: {"schema": _ref("OperationOutcome")}}}
    view = {"type": "object", "description": "The patient-view engine's assessment as series, thresholds and bands "
            "(docs/trend-view.md)", "required": ["indicator", "charts", "exposures", "criteria", "other_causes",
                                                  "not_read"]}
    return {
        "/app/": {"get": {"operationId": "trendViewIndex", "summary": "The trend view page (after the launch)",
                          "security": public, "responses": {"200": page}}},
        "/app/{name}": {"get": {
            "operationId": "trendViewFile", "summary": "launch.html, index.html and their scripts and styles",
            "security": public,
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": page, "404": missing}}},
        "/app/api/config": {"get": {
            "operationId": "trendViewConfig", "summary": "The SMART client id and scopes (NMS_CDS_SMART_*)",
            "security": public,
            "responses": {"200": _json({"type": "object", "required": ["clientId", "scope"]}, "Launch settings")}}},
        "/app/api/assessment": {"post": {
            "operationId": "trendViewAssessment",
            "summary": "The assessment of one patient read from the EHR's FHIR server (within NMS_CDS_FHIR_ALLOWLIST) "
                       "with the SMART access token as Authorization: Bearer",
            "security": public,
            "requestBody": {"required": True, "content": {JSON: {"schema": {
                "type": "object", "required": ["fhirServer", "patient"],
                "properties": {"fhirServer": {"type": "string"}, "patient": {"type": "string"}}}}}},
            "responses": {"200": _json(view, "Series, thresholds, exposures, onset, criteria, other causes"),
                          **_errors(settings, 400, 412, 413),
                          "401": _json(_ref("OperationOutcome"), "No SMART access token (required unless "
                                       "NMS_CDS_SMART_OPEN_FHIR_SERVER in development)")}}},
    }


def _worklist_paths(public: list[Any]) -> dict[str, Any]:
    """The surveillance worklist (:mod:`cds_service.web.worklist`, docs/surveillance.md)."""
    entry = {"type": "object", "required": ["id", "patient", "indicator", "summary", "state"]}
    refused = {"description": "Refused", "content": {JSON: {"schema": _ref("OperationOutcome")}}}
    errors = {"400": refused, "401": refused, "404": refused, "503": refused}
    return {
        "/worklist": {"get": {
            "operationId": "worklist", "summary": "Open worklist entries (JSON, or an HTML table); bearer "
            "NMS_CDS_WORKLIST_TOKEN, off without one in production", "security": public,
            "parameters": [{"name": "state", "in": "query", "required": False, "schema": {
                "type": "string", "enum": ["new", "seen", "resolved", "dismissed"]}}],
            "responses": {"200": _json({"type": "object", "required": ["entries"], "properties": {
                "entries": {"type": "array", "items": entry}}}, "Entries"), **errors}}},
        "/worklist/{entry_id}": {"post": {
            "operationId": "worklistState", "summary": "Mark an entry seen, resolved or dismissed (with a reason)",
            "security": public,
            "parameters": [{"name": "entry_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
            "requestBody": {"required": True, "content": {JSON: {"schema": {
                "type": "object", "required": ["state"], "properties": {
                    "state": {"type": "string"}, "reason": {"type": "string"}}}}}},
            "responses": {"200": _json({"type": "object"}, "Changed"), **errors}}},
    }


def _build(settings: Settings, services: dict[str, str]) -> dict[str, Any]:
    service_id = {
        "name": "service_id",
        "in": "path",
        "required": True,
        "description": "Service id from discovery",
        "schema": {"type": "string", "enum": list(services)},
    }
    public: list[dict[str, list[str]]] = []  # no authentication on these routes
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "nms-cds",
            "version": __version__,
            "summary": "CDS Hooks 2.0 patient-view, order-select and order-sign services: possible neuroleptic "
                       "malignant syndrome",
            "description": "CDS Hooks 2.0 (https://cds-hooks.hl7.org/2.0/) discovery, service and feedback "
                           "endpoints, plus a health check and this document.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": settings.public_base_url}],
        "paths": {
            "/cds-services": {
                "get": {
                    "operationId": "discovery",
                    "summary": "CDS Hooks discovery: the services offered, with their prefetch templates",
                    "responses": {"200": _json(_ref("Discovery"), "Service definitions"),
                                  **_errors(settings, 401, 503)},
                },
            },
            "/cds-services/{service_id}": {
                "post": {
                    "operationId": "callService",
                    "summary": "Call a service (the request's hook must be the service's): cards about a possible NMS "
                               "pattern",
                    "parameters": [service_id],
                    "requestBody": {"required": True, "content": {JSON: {"schema": _ref("HookRequest")}}},
                    "responses": {
                        "200": _json(_ref("HookResponse"),
                                     "Cards (possibly none); degraded answers say what could not be retrieved"),
                        **_errors(settings, 400, 401, 404, 412, 413, 503),
                    },
                },
            },
            "/cds-services/{service_id}/feedback": {
                "post": {
                    "operationId": "feedback",
                    "summary": "CDS Hooks feedback on cards (idempotent)",
                    "parameters": [service_id],
                    "requestBody": {"required": True, "content": {JSON: {"schema": _ref("FeedbackRequest")}}},
                    "responses": {
                        "200": _json(_ref("FeedbackResponse"), "How many items were received and how many new"),
                        **_errors(settings, 400, 401, 404, 413, 429, 503),
                    },
                },
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness probe (no authentication)",
                    "security": public,
                    "responses": {"200": _json(_ref("Health"), "The process answers")},
                },
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This OpenAPI document (no authentication)",
                    "security": public,
                    "responses": {"200": _json(_ref("OpenApiDocument"), "OpenAPI 3.1 document")},
                },
            },
            **_ops_paths(public),
            **_app_paths(settings, public),
            **_worklist_paths(public),
        },
        "components": {
            "schemas": _schemas(list(dict.fromkeys(services.values()))),
            "headers": {
                "X-Request-Id": {
                    "description": "The caller's X-Request-Id (first 64 characters) or a generated id",
                    "schema": {"type": "string"},
                },
            },
        },
    }
    if settings.auth == AuthMode.JWT:
        document["components"]["securitySchemes"] = {
            "cdsClientJwt": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "CDS Hooks 2.0 client JWT (ES384/RS384), signed by a client in "
                               "NMS_CDS_TRUSTED_CLIENTS; `aud` is the endpoint URL under NMS_CDS_PUBLIC_BASE_URL",
            },
        }
        document["security"] = [{"cdsClientJwt": []}]
    else:
        for item in document["paths"].values():
            for operation in item.values():
                operation.pop("security", None)
                operation["responses"].pop("401", None)
    return document


def openapi_document(settings: Settings, services: dict[str, str] | None = None) -> dict[str, Any]:
    """The document for a deployment with ``settings`` (built fresh: a few hundred microseconds);
    ``services`` maps service id → hook (default: the three services of ``settings``)."""
    return _build(settings, services if services is not None else service_hooks(settings))
