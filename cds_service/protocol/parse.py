"""Validate a decoded CDS Hooks 2.0 request against the typed wire models of :mod:`cds_service.protocol.models`.

Strict where the spec is (REQUIRED fields and their types → 400 naming the field), lenient where real
clients deviate (no ``Bundle.type``, unknown ``extension`` members, extra context fields).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from cds_service.errors import BadRequest
from cds_service.protocol import models

_KIND_WORDS = {"string_type": "a string", "model_type": "an object", "model_attributes_type": "an object",
               "dict_type": "an object", "list_type": "an array", "bool_type": "a boolean", "int_type": "an integer"}


def field_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as the request's member path: ``context.selections[0]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _bad_request(exc: ValidationError, *, expected_hook: str | None = None) -> BadRequest:
    """The first validation error as a 400 naming its field (the models list members in the spec's order)."""
    error = exc.errors(include_url=False)[0]
    path = field_path(error["loc"])
    kind, value = error["type"], error.get("input")
    if not path:
        return BadRequest("request body must be a JSON object")
    if kind == "missing" or (value is None and kind in _KIND_WORDS):
        message = f"missing required field '{path}'"
    elif path == "hook" and kind == "literal_error" and expected_hook:
        message = f"hook '{str(value)[:40]}' is not served here; this service handles '{expected_hook}'"
    elif kind in _KIND_WORDS:
        message = f"field '{path}' must be {_KIND_WORDS[kind]}"
    elif kind == "literal_error":
        message = f"field '{path}' must be {(error.get('ctx') or {}).get('expected', 'one of the allowed values')}"
    elif kind == "too_short":
        message = f"field '{path}' must not be empty"
    elif kind == "value_error":
        message = f"field '{path}' {error['msg'].removeprefix('Value error, ')}"
    else:
        message = f"field '{path}' is invalid ({error['msg']})"
    return BadRequest(message, field=path)


@dataclass(frozen=True)
class HookRequest:
    hook: str
    hook_instance: str
    context: dict[str, Any]  # as sent: prefetch tokens are filled from it
    patient_id: str
    user_id: str
    encounter_id: str | None
    draft_orders: dict[str, Any]
    fhir_server: str | None
    access_token: str | None
    prefetch: dict[str, Any] | None
    selections: tuple[str, ...] = ()  # order-select: "MedicationRequest/<id>" of the orders being picked

    @classmethod
    def server_read(cls, hook: str, patient_id: str, fhir_server: str, access_token: str | None,
                    user_id: str) -> HookRequest:
        """A call the service makes on its own behalf (trend view, surveillance): no prefetch and no drafts, so
        every key is read from ``fhir_server`` with ``access_token``."""
        return cls(hook=hook, hook_instance=str(uuid.uuid4()), context={"patientId": patient_id, "userId": user_id},
                   patient_id=patient_id, user_id=user_id, encounter_id=None, draft_orders={},
                   fhir_server=fhir_server, access_token=access_token, prefetch=None)

    def draft_resources(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for entry in self.draft_orders.get("entry") or []:
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                out.append(entry["resource"])
        return out


def parse_hook_request(body: Any, *, expected_hook: str) -> HookRequest:
    """Validate ``body`` against the typed request model of ``expected_hook`` (:mod:`.models`)."""
    model = models.REQUEST_MODELS[expected_hook]
    try:
        parsed = model.model_validate(body)
    except ValidationError as exc:
        raise _bad_request(exc, expected_hook=expected_hook) from None
    if parsed.fhirAuthorization is not None and parsed.fhirServer is None:
        raise BadRequest("'fhirAuthorization' requires 'fhirServer' (cds-r-1)", field="fhirServer")
    context = parsed.context
    has_drafts = isinstance(context, models.OrderSignContext | models.OrderSelectContext)
    draft_orders = body["context"].get("draftOrders") if has_drafts else None
    return HookRequest(
        hook=parsed.hook,
        hook_instance=parsed.hookInstance,
        context=body["context"],
        patient_id=context.patientId,
        user_id=context.userId,
        encounter_id=context.encounterId,
        draft_orders=draft_orders if isinstance(draft_orders, dict) else {},
        fhir_server=parsed.fhirServer.strip() if parsed.fhirServer is not None else None,
        access_token=parsed.fhirAuthorization.access_token if parsed.fhirAuthorization else None,
        prefetch=body.get("prefetch"),
        selections=tuple(context.selections) if isinstance(context, models.OrderSelectContext) else (),
    )


def parse_feedback(body: Any) -> list[dict[str, Any]]:
    """Validate a feedback body against :class:`.models.FeedbackRequest`; one plain record per item."""
    try:
        parsed = models.FeedbackRequest.model_validate(body)
    except ValidationError as exc:
        raise _bad_request(exc) from None
    out = []
    for i, item in enumerate(parsed.feedback):
        if item.outcome == "accepted" and item.acceptedSuggestions is None:  # cds-fb-2
            path = f"feedback[{i}].acceptedSuggestions"
            raise BadRequest(f"missing required field '{path}'", field=path)
        out.append({"card": item.card, "outcome": item.outcome, "outcomeTimestamp": item.outcomeTimestamp,
                    "acceptedSuggestions": [s.id for s in item.acceptedSuggestions or []],
                    "overrideReason": (item.overrideReason or {}).get("reason")})
    return out
