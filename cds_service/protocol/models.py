"""One typed model per CDS Hooks 2.0 wire object: the single definition of the contract.

Request validation (:mod:`cds_service.protocol.parse`: a 400 naming the first offending field) and the
OpenAPI document (:mod:`cds_service.protocol.openapi`, ``/openapi.json``) are both derived from these models, so the
two cannot drift apart. ``tests/helpers/cdshooks_check.py`` stays an independent re-statement of the spec.

Strict where the spec is (REQUIRED members and their types, FHIR ids, ``Type/id`` references, the
128-character ``hookInstance``), lenient where real clients deviate: unknown members and ``extension`` are
ignored everywhere, ``Bundle.type`` is not required, prefetch values and Bundle entries may be anything
(the data-access layer reads them leniently). Optional response members are omitted, never ``null``
(``SkipJsonSchema[None]`` keeps ``null`` out of the documented response schemas).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    WithJsonSchema,
    model_serializer,
)
from pydantic.config import JsonDict
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
REFERENCE = re.compile(r"^[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}$")  # a relative reference "Type/id"
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]{1,8192}")
_BEARER = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr]$")
HOOK_INSTANCE_MAX = 128


def _checked(pattern: re.Pattern[str], message: str) -> Any:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):  # fullmatch: '$' would let a trailing newline through
            raise PydanticCustomError("value_error", message)
        return value
    return AfterValidator(check)


def _non_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("value_error", "must not be empty")
    return value


NON_BLANK_SCHEMA = {"type": "string", "minLength": 1, "pattern": r"\S",
                    "description": "not blank (whitespace only is a 400)"}
NonBlank = Annotated[str, AfterValidator(_non_blank), WithJsonSchema(NON_BLANK_SCHEMA)]
FhirId = Annotated[str, _checked(FHIR_ID, "is not a valid FHIR id"),
                   WithJsonSchema({"type": "string", "pattern": FHIR_ID.pattern,
                                   "description": "FHIR id: [A-Za-z0-9-.]{1,64}"})]
Reference = Annotated[str, _checked(REFERENCE, "must be a reference 'Type/id'"),
                      WithJsonSchema({"type": "string", "pattern": REFERENCE.pattern,
                                      "description": "relative reference Type/id, e.g. MedicationRequest/123"})]
AccessToken = Annotated[str, _checked(_TOKEN_CHARS, "must be printable ASCII without spaces (an RFC 6750 bearer "
                                                     "token)"),
                        WithJsonSchema({"type": "string", "pattern": "^[\\x21-\\x7e]{1,8192}$"})]
TokenType = Annotated[str, _checked(_BEARER, "must be 'Bearer'"),
                      WithJsonSchema({"type": "string", "pattern": _BEARER.pattern,
                                      "description": "'Bearer' (any case); the default when absent"})]


def _hook_instance(value: str) -> str:
    _non_blank(value)
    if len(value) > HOOK_INSTANCE_MAX:
        raise PydanticCustomError("value_error", "is longer than {limit} characters", {"limit": HOOK_INSTANCE_MAX})
    return value


HookInstance = Annotated[str, AfterValidator(_hook_instance),
                         WithJsonSchema({**NON_BLANK_SCHEMA, "maxLength": HOOK_INSTANCE_MAX})]
Omitted = SkipJsonSchema[None]  # an optional response member: absent, never null


class Wire(BaseModel):
    """Base of the request models: unknown members (``extension`` included) are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class Closed(BaseModel):
    """Base of bodies this service writes with exactly these members."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- shared ------------------------------------------------------------------------------------------

def _fhir_json(value: Any) -> Any:
    """FHIR JSON has no null or empty values (R4 JSON representation, 2.6.2): drop them anywhere."""
    if isinstance(value, dict):
        cleaned = {k: _fhir_json(v) for k, v in value.items()}
        return {k: v for k, v in cleaned.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        cleaned_list = [_fhir_json(v) for v in value]
        return [v for v in cleaned_list if v not in (None, "", [], {})]
    return value


class FhirResource(BaseModel):
    """Any FHIR R4 resource as JSON (read leniently: unknown members are ignored). Written without the null or
    empty values a FHIR server's copy may hold (an ``update`` action carries the record's resource)."""

    model_config = ConfigDict(extra="allow")
    resourceType: str
    id: str | Omitted = None

    @model_serializer(mode="wrap")
    def _without_empty_values(self, handler: SerializerFunctionWrapHandler) -> Any:
        return _fhir_json(handler(self))


class Coding(BaseModel):
    system: str | Omitted = None
    code: str | Omitted = None
    display: str | Omitted = None


# --- discovery ------------------------------------------------------------------------------------------

class ServiceDefinition(BaseModel):
    """One entry of the discovery document."""

    hook: str = Field(min_length=1)
    title: str | Omitted = Field(None, min_length=1)
    description: str = Field(min_length=1)
    id: str = Field(min_length=1)
    prefetch: dict[str, Annotated[str, Field(min_length=1)]] | Omitted = None
    usageRequirements: str | Omitted = Field(None, min_length=1)
    extension: dict[str, Any] | Omitted = Field(
        None, description="davinci-crd.configuration-options: the options a request may send (Da Vinci CRD form)")


class Discovery(BaseModel):
    version: str | Omitted = Field(None, description="The CDS Hooks version the service implements (3.0 ballot)")
    services: list[ServiceDefinition]


# --- service requests --------------------------------------------------------------------------------

class DraftOrders(Wire):
    """FHIR Bundle of the unsigned orders; MedicationRequest entries are read, entries that are not objects with
    a ``resource`` object are ignored."""

    resourceType: Literal["Bundle"] = Field("Bundle", description="may be absent")
    type: Any = Field(None, description="Bundle.type, e.g. collection (not checked: real clients omit it)")
    entry: list[Any] | None = Field(None, description="Bundle entries ({fullUrl, resource}); anything else is ignored")


class FhirAuthorization(Wire):
    """OAuth 2.0 bearer token for fhirServer (needs fhirServer, cds-r-1). The token is sent only to URLs under
    fhirServer; expires_in, scope and subject are accepted, not used."""

    access_token: AccessToken
    token_type: TokenType = "Bearer"


class PatientViewContext(Wire):
    """patient-view context (CDS Hooks 2.0); other members are accepted and ignored."""

    userId: NonBlank = Field(description="e.g. Practitioner/123")
    patientId: FhirId
    encounterId: FhirId | None = None


class OrderSelectContext(Wire):
    """order-select context (CDS Hooks 2.0): only the orders named in ``selections`` are assessed as new; other
    members are accepted and ignored."""

    userId: NonBlank = Field(description="e.g. Practitioner/123")
    patientId: FhirId
    encounterId: FhirId | None = None
    draftOrders: DraftOrders
    selections: list[Reference] = Field(min_length=1, description="references of the selected draft orders")


class OrderSignContext(Wire):
    """order-sign context (CDS Hooks 2.0); other members are accepted and ignored."""

    userId: NonBlank = Field(description="e.g. Practitioner/123")
    patientId: FhirId
    encounterId: FhirId | None = None
    draftOrders: DraftOrders


_FHIR_SERVER = ("FHIR base URL; contacted only when it is within NMS_CDS_FHIR_ALLOWLIST (https, or http on "
                "loopback); another value is not contacted")
_PREFETCH = ("Prefetch key → FHIR resource (a searchset Bundle for searches) or null (no data). A missing key, an "
             "OperationOutcome or any other value is fetched from fhirServer instead (and reported as not "
             "retrieved when that fails).")
_CDS_R_1: JsonDict = {"dependentSchemas": {"fhirAuthorization": {
    "if": {"properties": {"fhirAuthorization": {"type": "object"}}},
    "then": {"required": ["fhirServer"], "properties": {"fhirServer": {"type": "string"}}}}}}


class _HookRequest(Wire):
    """What every CDS Hooks 2.0 service request carries; each hook's model fixes ``hook`` and ``context``."""

    model_config = ConfigDict(json_schema_extra=_CDS_R_1)
    hook: str
    hookInstance: HookInstance
    context: Wire
    fhirServer: NonBlank | None = Field(None, description=_FHIR_SERVER)
    fhirAuthorization: FhirAuthorization | None = None
    prefetch: dict[str, Any] | None = Field(None, description=_PREFETCH)
    extension: dict[str, Any] | None = Field(
        None, description="Read: davinci-crd.configuration, the options chosen for this call (discovery lists them; "
                          "they can only make the answer quieter); any other member is ignored")


class PatientViewRequest(_HookRequest):
    """CDS Hooks 2.0 service request for the ``patient-view`` hook."""

    hook: Literal["patient-view"]
    context: PatientViewContext


class OrderSelectRequest(_HookRequest):
    """CDS Hooks 2.0 service request for the ``order-select`` hook."""

    hook: Literal["order-select"]
    context: OrderSelectContext


class OrderSignRequest(_HookRequest):
    """CDS Hooks 2.0 service request for the ``order-sign`` hook."""

    hook: Literal["order-sign"]
    context: OrderSignContext


AnyHookRequest = PatientViewRequest | OrderSelectRequest | OrderSignRequest
REQUEST_MODELS: dict[str, type[AnyHookRequest]] = {
    "patient-view": PatientViewRequest, "order-select": OrderSelectRequest, "order-sign": OrderSignRequest}


# --- service responses -----------------------------------------------------------------------------------

class Source(BaseModel):
    label: str = Field(min_length=1)
    url: str | Omitted = Field(None, json_schema_extra={"format": "uri"})
    icon: str | Omitted = Field(None, json_schema_extra={"format": "uri"})
    topic: Coding | Omitted = None


class OverrideReason(BaseModel):
    """A Coding offered as a reason to override; ``display`` is REQUIRED here (cds-resp-4)."""

    system: str = Field(min_length=1)
    code: str = Field(min_length=1)
    display: str = Field(min_length=1)


class Action(BaseModel):
    type: Literal["create", "update", "delete"]
    description: str = Field(min_length=1)
    resource: FhirResource | Omitted = None
    resourceId: str | Omitted = Field(None, min_length=1)


class Suggestion(BaseModel):
    label: str = Field(min_length=1)
    uuid: str | Omitted = Field(None, json_schema_extra={"format": "uuid"})
    isRecommended: bool | Omitted = None
    actions: Annotated[list[Action], Field(min_length=1)] | Omitted = None


class Link(BaseModel):
    label: str = Field(min_length=1)
    url: str = Field(json_schema_extra={"format": "uri"})
    type: Literal["absolute", "smart"]
    appContext: str | Omitted = None


class Card(BaseModel):
    """One card; members in the order this service writes them (``model_dump(exclude_none=True)`` is the wire)."""

    uuid: str | Omitted = Field(None, json_schema_extra={
        "format": "uuid", "description": "order-sign: uuid5 of hookInstance and card kind; patient-view and "
                                         "order-select: uuid5 of the evidence shown (repeated openings, same uuid)"})
    summary: str = Field(min_length=1, max_length=139)
    indicator: Literal["info", "warning", "critical"]
    detail: str | Omitted = Field(None, min_length=1, description="GitHub Flavored Markdown")
    source: Source
    links: Annotated[list[Link], Field(min_length=1)] | Omitted = None
    overrideReasons: Annotated[list[OverrideReason], Field(min_length=1)] | Omitted = None
    suggestions: Annotated[list[Suggestion], Field(min_length=1)] | Omitted = None
    selectionBehavior: Literal["at-most-one", "any"] | Omitted = None


class HookResponse(BaseModel):
    cards: list[Card]
    systemActions: list[Action] | Omitted = None


# --- feedback ---------------------------------------------------------------------------------------------

class AcceptedSuggestion(Wire):
    id: str


class FeedbackItem(Wire):
    model_config = ConfigDict(json_schema_extra={
        "if": {"properties": {"outcome": {"const": "accepted"}}, "required": ["outcome"]},
        "then": {"required": ["acceptedSuggestions"]}})
    card: NonBlank = Field(description="uuid of the card the feedback is about")
    outcome: Literal["accepted", "overridden"]
    outcomeTimestamp: NonBlank = Field(description="FHIR instant")
    acceptedSuggestions: list[AcceptedSuggestion] | None = Field(
        None, description="REQUIRED when outcome is accepted (cds-fb-2)")
    overrideReason: dict[str, Any] | None = Field(
        None, description="{reason: Coding, userComment: string}; the reason is stored as given")


class FeedbackRequest(Wire):
    feedback: list[FeedbackItem] = Field(min_length=1)


class FeedbackResponse(Closed):
    received: int = Field(ge=1)
    new: int = Field(ge=0)


# --- errors and the rest --------------------------------------------------------------------------------

class Issue(BaseModel):
    severity: Literal["fatal", "error", "warning", "information"]
    code: str = Field(min_length=1)
    diagnostics: str | Omitted = Field(None, min_length=1)
    expression: list[str] | Omitted = Field(None, description="the offending request member, where there is one")


class OperationOutcome(BaseModel):
    """FHIR OperationOutcome: every error answer (4xx/5xx). ``code`` is a FHIR IssueType; ``diagnostics`` names
    the problem (412: per prefetch key, what failed; 401: no detail)."""

    resourceType: Literal["OperationOutcome"]
    issue: list[Issue] = Field(min_length=1)


class Health(Closed):
    status: Literal["ok"]


class OpenApiDocument(BaseModel):
    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]


SCHEMA_MODELS: tuple[type[BaseModel], ...] = (
    OperationOutcome, Discovery, PatientViewRequest, OrderSelectRequest, OrderSignRequest,
    HookResponse, FeedbackRequest, FeedbackResponse, Health, OpenApiDocument,
)
