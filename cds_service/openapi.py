"""The OpenAPI 3.1 document of the HTTP surface, served at ``GET /openapi.json``.

It describes exactly the routes of :mod:`cds_service.hooks.blueprint` (``tests/test_openapi.py`` keeps
the two in sync) and the bodies as the service reads and writes them: strict where the service is strict
(the REQUIRED CDS Hooks fields and their types, FHIR ids, the 128-character ``hookInstance``), lenient
where the service is deliberately lenient (extra members, prefetch values of any shape, Bundle entries
that are not objects are ignored). Error bodies are the ones ``blueprint._error_response`` builds:
``{"error", "message", "field"?}`` for 400/404/405/413, a bare ``{"error": "unauthorized"}`` for 401
(no detail on purpose) and a FHIR ``OperationOutcome`` for 412.

The document depends on the settings only where the deployment does: the service id, the public base
URL, the body limits, and whether JWT authentication is on (``security`` is declared only then).
"""

from __future__ import annotations

from typing import Any

from cds_service import __version__, metrics
from cds_service.config import AuthMode, Settings
from cds_service.hooks.request import FHIR_ID

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


NON_BLANK = {"type": "string", "minLength": 1, "description": "not blank (whitespace only is a 400)"}


def _schemas(hook: str) -> dict[str, Any]:
    fhir_id = {"type": "string", "pattern": FHIR_ID.pattern, "description": "FHIR id: [A-Za-z0-9-.]{1,64}"}
    coding = {
        "type": "object",
        "properties": {"system": {"type": "string"}, "code": {"type": "string"}, "display": {"type": "string"}},
    }
    return {
        # --- shared ---------------------------------------------------------------------------------
        "FhirId": fhir_id,
        "Coding": coding,
        "FhirResource": {
            "type": "object",
            "description": "Any FHIR R4 resource as JSON (read leniently: unknown members are ignored)",
            "required": ["resourceType"],
            "properties": {"resourceType": {"type": "string"}, "id": {"type": "string"}},
            "additionalProperties": True,
        },
        "Error": {
            "type": "object",
            "description": "A rejected request. `message` names the problem; `field` the offending member",
            "required": ["error", "message"],
            "properties": {
                "error": {"type": "string", "minLength": 1,
                          "examples": ["invalid", "not-found", "too-costly", "method-not-allowed"]},
                "message": {"type": "string", "minLength": 1},
                "field": {"type": "string", "minLength": 1},
            },
            "additionalProperties": False,
        },
        "Unauthorized": {
            "type": "object",
            "description": "JWT missing or invalid; the reason is logged, never returned",
            "required": ["error"],
            "properties": {"error": {"const": "unauthorized"}},
            "additionalProperties": False,
        },
        "OperationOutcome": {
            "type": "object",
            "description": "FHIR OperationOutcome: required FHIR data could be had neither from prefetch nor "
                           "from fhirServer (diagnostics say, per prefetch key, what failed)",
            "required": ["resourceType", "issue"],
            "properties": {
                "resourceType": {"const": "OperationOutcome"},
                "issue": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["severity", "code"],
                        "properties": {
                            "severity": {"enum": ["fatal", "error", "warning", "information"]},
                            "code": {"type": "string", "minLength": 1},
                            "diagnostics": {"type": "string", "minLength": 1},
                        },
                    },
                },
            },
        },
        # --- discovery ------------------------------------------------------------------------------
        "Discovery": {
            "type": "object",
            "required": ["services"],
            "properties": {"services": {"type": "array", "items": _ref("ServiceDefinition")}},
        },
        "ServiceDefinition": {
            "type": "object",
            "required": ["hook", "description", "id"],
            "properties": {
                "hook": {"type": "string", "minLength": 1},
                "title": {"type": "string", "minLength": 1},
                "description": {"type": "string", "minLength": 1},
                "id": {"type": "string", "minLength": 1},
                "prefetch": {"type": "object", "additionalProperties": {"type": "string", "minLength": 1}},
                "usageRequirements": {"type": "string", "minLength": 1},
            },
        },
        # --- service request ------------------------------------------------------------------------
        "DraftOrders": {
            "type": "object",
            "description": "FHIR Bundle of the draft orders being signed; MedicationRequest entries are read, "
                           "entries that are not objects with a `resource` object are ignored",
            "properties": {
                "resourceType": {"const": "Bundle", "description": "may be absent"},
                "type": {"description": "Bundle.type, e.g. collection (not checked: real clients omit it)"},
                "entry": {
                    "type": ["array", "null"],
                    "description": "Bundle entries ({fullUrl, resource}); anything else is ignored",
                },
            },
        },
        "OrderSignContext": {
            "type": "object",
            "description": "order-sign context (CDS Hooks 2.0); other members are accepted and ignored",
            "required": ["userId", "patientId", "draftOrders"],
            "properties": {
                "userId": {**NON_BLANK, "description": "e.g. Practitioner/123"},
                "patientId": _ref("FhirId"),
                "encounterId": {"oneOf": [_ref("FhirId"), {"type": "null"}]},
                "draftOrders": _ref("DraftOrders"),
            },
        },
        "FhirAuthorization": {
            "type": "object",
            "description": "OAuth 2.0 bearer token for fhirServer (needs fhirServer, cds-r-1). The token is sent "
                           "only to URLs under fhirServer; expires_in, scope and subject are accepted, not used",
            "required": ["access_token"],
            "properties": {
                "access_token": NON_BLANK,
                "token_type": {"type": "string", "pattern": "^[Bb][Ee][Aa][Rr][Ee][Rr]$",
                               "description": "'Bearer' (any case); the default when absent"},
            },
        },
        "HookRequest": {
            "type": "object",
            "description": f"CDS Hooks 2.0 service request for the `{hook}` hook",
            "required": ["hook", "hookInstance", "context"],
            "properties": {
                "hook": {"const": hook},
                "hookInstance": {**NON_BLANK, "maxLength": 128},
                "fhirServer": {
                    "type": ["string", "null"],
                    "minLength": 1,
                    "description": "FHIR base URL; contacted only when it is within NMS_CDS_FHIR_ALLOWLIST "
                                   "(https, or http on loopback); another value is not contacted",
                },
                "fhirAuthorization": {"oneOf": [_ref("FhirAuthorization"), {"type": "null"}]},
                "context": _ref("OrderSignContext"),
                "prefetch": {
                    "type": ["object", "null"],
                    "description": "Prefetch key → FHIR resource (a searchset Bundle for searches) or null (no "
                                   "data). A missing key, an OperationOutcome or any other value is fetched from "
                                   "fhirServer instead (and reported as not retrieved when that fails).",
                },
            },
            "dependentSchemas": {
                "fhirAuthorization": {
                    "if": {"properties": {"fhirAuthorization": {"type": "object"}}},
                    "then": {"required": ["fhirServer"],
                             "properties": {"fhirServer": {"type": "string"}}},
                },
            },
        },
        # --- service response -----------------------------------------------------------------------
        "HookResponse": {
            "type": "object",
            "required": ["cards"],
            "properties": {
                "cards": {"type": "array", "items": _ref("Card")},
                "systemActions": {"type": "array", "items": _ref("Action")},
            },
        },
        "Card": {
            "type": "object",
            "required": ["summary", "indicator", "source"],
            "properties": {
                "uuid": {"type": "string", "format": "uuid",
                         "description": "uuid5 of hookInstance and card kind; ties feedback to the card"},
                "summary": {"type": "string", "minLength": 1, "maxLength": 139},
                "detail": {"type": "string", "minLength": 1, "description": "GitHub Flavored Markdown"},
                "indicator": {"enum": ["info", "warning", "critical"]},
                "source": _ref("Source"),
                "suggestions": {"type": "array", "minItems": 1, "items": _ref("Suggestion")},
                "selectionBehavior": {"enum": ["at-most-one", "any"]},
                "overrideReasons": {"type": "array", "minItems": 1, "items": _ref("OverrideReason")},
                "links": {"type": "array", "minItems": 1, "items": _ref("Link")},
            },
        },
        "Source": {
            "type": "object",
            "required": ["label"],
            "properties": {
                "label": {"type": "string", "minLength": 1},
                "url": {"type": "string", "format": "uri"},
                "icon": {"type": "string", "format": "uri"},
                "topic": coding,
            },
        },
        "OverrideReason": {
            "type": "object",
            "required": ["system", "code", "display"],
            "properties": {
                "system": {"type": "string", "minLength": 1},
                "code": {"type": "string", "minLength": 1},
                "display": {"type": "string", "minLength": 1},
            },
        },
        "Suggestion": {
            "type": "object",
            "required": ["label"],
            "properties": {
                "label": {"type": "string", "minLength": 1},
                "uuid": {"type": "string", "format": "uuid"},
                "isRecommended": {"type": "boolean"},
                "actions": {"type": "array", "minItems": 1, "items": _ref("Action")},
            },
        },
        "Action": {
            "type": "object",
            "required": ["type", "description"],
            "properties": {
                "type": {"enum": ["create", "update", "delete"]},
                "description": {"type": "string", "minLength": 1},
                "resource": _ref("FhirResource"),
                "resourceId": {"type": "string", "minLength": 1},
            },
        },
        "Link": {
            "type": "object",
            "required": ["label", "url", "type"],
            "properties": {
                "label": {"type": "string", "minLength": 1},
                "url": {"type": "string", "format": "uri"},
                "type": {"enum": ["absolute", "smart"]},
                "appContext": {"type": "string"},
            },
        },
        # --- feedback -------------------------------------------------------------------------------
        "FeedbackRequest": {
            "type": "object",
            "required": ["feedback"],
            "properties": {"feedback": {"type": "array", "minItems": 1, "items": _ref("FeedbackItem")}},
        },
        "FeedbackItem": {
            "type": "object",
            "required": ["card", "outcome", "outcomeTimestamp"],
            "properties": {
                "card": {**NON_BLANK, "description": "uuid of the card the feedback is about"},
                "outcome": {"enum": ["accepted", "overridden"]},
                "outcomeTimestamp": {**NON_BLANK, "description": "FHIR instant"},
                "acceptedSuggestions": {
                    "type": "array",
                    "items": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}},
                },
                "overrideReason": {
                    "type": ["object", "null"],
                    "description": "{reason: Coding, userComment: string}; the reason is stored as given",
                },
            },
            "if": {"properties": {"outcome": {"const": "accepted"}}, "required": ["outcome"]},
            "then": {"required": ["acceptedSuggestions"]},
        },
        "FeedbackResponse": {
            "type": "object",
            "required": ["received", "new"],
            "properties": {
                "received": {"type": "integer", "minimum": 1},
                "new": {"type": "integer", "minimum": 0},
            },
            "additionalProperties": False,
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ok"}},
            "additionalProperties": False,
        },
        "OpenApiDocument": {
            "type": "object",
            "required": ["openapi", "info", "paths"],
            "properties": {"openapi": {"type": "string"}, "info": {"type": "object"}, "paths": {"type": "object"}},
        },
    }


def _errors(settings: Settings, *statuses: int) -> dict[str, Any]:
    limit = settings.max_body_bytes
    texts = {
        400: ("Malformed request: not JSON, not UTF-8, nesting deeper than "
              f"{settings.max_json_depth} levels, or a REQUIRED member missing or mistyped", "Error"),
        401: ("JWT missing or invalid (only when NMS_CDS_AUTH=jwt)", "Unauthorized"),
        404: ("No CDS service with this id", "Error"),
        412: ("Required FHIR data (temperatures, vital signs and laboratory results all failed) could be had "
              "neither from prefetch nor from fhirServer", "OperationOutcome"),
        413: (f"Request body larger than {limit} bytes (NMS_CDS_MAX_BODY_BYTES); for feedback also more than "
              f"{settings.feedback_max_items} items or an item over {settings.feedback_max_item_bytes} bytes",
              "Error"),
        503: ("The store (database or Redis) could not be used; `message` names the cause. Nothing was stored: "
              "send the same request again (Retry-After)", "Error"),
    }
    return {str(s): _json(_ref(texts[s][1]), texts[s][0]) for s in statuses}


def _build(settings: Settings, hook: str) -> dict[str, Any]:
    service_id = {
        "name": "service_id",
        "in": "path",
        "required": True,
        "description": "Service id from discovery",
        "schema": {"type": "string", "enum": [settings.service_id]},
    }
    public: list[dict[str, list[str]]] = []  # no authentication on these routes
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "nms-cds",
            "version": __version__,
            "summary": "CDS Hooks 2.0 order-sign service: possible neuroleptic malignant syndrome",
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
                    "summary": "Call the order-sign service: cards about a possible NMS pattern",
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
                        **_errors(settings, 400, 401, 404, 413, 503),
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
            **metrics.openapi_paths(public),  # /metrics and /readyz (cds_service/metrics.py)
        },
        "components": {
            "schemas": _schemas(hook),
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


def openapi_document(settings: Settings, hook: str = "order-sign") -> dict[str, Any]:
    """The document for a deployment with ``settings`` (built fresh: a few hundred microseconds)."""
    return _build(settings, hook)
