"""FHIR R4 models for nms-cds: ``fhir.resources.R4B`` behind one small, lenient front.

R4B is wire-compatible with R4 for the resources we read (Observation, MedicationRequest, Medication,
Condition, AllergyIntolerance, Patient). The package default is R5, which rejects R4 MedicationRequests, so
nothing else in nms-cds imports ``fhir.resources`` directly.

Real clients deviate from R4 (the reference sandbox sends ``MedicationRequest.category`` as an object, the
hook library writes ``doseAndRate`` as an object). :func:`parse` repairs what it safely can — a single
object where a list is required is wrapped, any other invalid element is dropped — and reports what it
repaired by path, never by value. A resource that cannot be repaired yields ``None``, never an exception.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from fhir.resources.R4B.allergyintolerance import AllergyIntolerance
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.medication import Medication
from fhir.resources.R4B.medicationadministration import MedicationAdministration
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.medicationstatement import MedicationStatement
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from pydantic import ValidationError

__all__ = [
    "REASONS",
    "AllergyIntolerance",
    "Condition",
    "Encounter",
    "Medication",
    "MedicationAdministration",
    "MedicationRequest",
    "MedicationStatement",
    "Observation",
    "ParseResult",
    "Patient",
    "parse",
    "tidy",
    "tidy_code",
]

MODELS: dict[str, type[FHIRAbstractModel]] = {
    "AllergyIntolerance": AllergyIntolerance,
    "Condition": Condition,
    "Encounter": Encounter,
    "Medication": Medication,
    "MedicationAdministration": MedicationAdministration,
    "MedicationRequest": MedicationRequest,
    "MedicationStatement": MedicationStatement,
    "Observation": Observation,
    "Patient": Patient,
}

_MAX_REPAIRS = 12


@dataclass(slots=True)
class ParseResult:
    model: Any | None
    repairs: list[str] = field(default_factory=list)
    reason: str | None = None  # why ``model`` is None: one of REASONS (a bounded label, no value)


# Why a resource could not be read, in words for the card and as a bounded metrics label.
REASONS = ("invalid status", "missing status", "invalid code", "missing code", "invalid subject",
           "missing subject", "invalid intent", "missing intent", "invalid medication", "missing medication",
           "invalid time", "invalid value", "invalid extension", "invalid structure", "nested too deeply",
           "unparseable value", "not an object", "unsupported type")
_ELEMENT_REASON = {"status": "status", "code": "code", "subject": "subject", "patient": "subject",
                   "intent": "intent", "medicationCodeableConcept": "medication",
                   "medicationReference": "medication", "extension": "extension", "modifierExtension": "extension"}


def _reason(errors: list[Any], original: dict[str, Any]) -> str:
    """A bounded label for the first error that stopped the repair: the top-level element it names."""
    for err in errors:
        loc = [p for p in err.get("loc", ()) if not (isinstance(p, str) and p.startswith("function-"))]
        name = loc[0] if loc and isinstance(loc[0], str) else ""
        if not name and "'medicationCodeableConcept'" in str(err.get("msg", "")):  # the choice [x] validator
            name = "medicationCodeableConcept"
        if name.startswith(("effective", "issued", "authoredOn", "dateAsserted")):
            return "invalid time"
        if name.startswith("value"):
            return "invalid value"
        element = _ELEMENT_REASON.get(name)
        if element is None:
            continue
        if element == "extension":
            return "invalid extension"
        if name in original and element in ("status", "code", "subject", "intent", "medication"):
            return f"invalid {element}"
        return f"missing {element}"
    return "invalid structure"


def tidy_code(value: Any) -> Any:
    """A code with stray whitespace (``"Final "``, ``" active"``) as the code it plainly is; anything else as
    given. Case is kept: the rules compare statuses case-insensitively, and an unknown code stays unknown."""
    if isinstance(value, str) and value and not value.isspace():
        return " ".join(value.split())
    return value


_TIDY_CODES = ("status", "intent")


def _drop_urlless_extensions(node: Any) -> int:
    """Remove every ``extension`` entry without a ``url`` (it cannot say what it means, and an ``extension``
    never changes the meaning of the rest); returns how many were removed. ``modifierExtension`` is left
    alone: a modifier without a url may change the meaning, so such a resource stays unreadable."""
    removed = 0
    if isinstance(node, dict):
        extensions = node.get("extension")
        if isinstance(extensions, list):
            kept = [e for e in extensions if not (isinstance(e, dict) and not isinstance(e.get("url"), str))]
            removed += len(extensions) - len(kept)
            if kept:
                node["extension"] = kept
            else:
                del node["extension"]
        for key, value in node.items():
            if key != "modifierExtension":
                removed += _drop_urlless_extensions(value)
    elif isinstance(node, list):
        for item in node:
            removed += _drop_urlless_extensions(item)
    return removed


def tidy(data: dict[str, Any]) -> list[str]:
    """Repair, in place, the harmless malformations that change no meaning: whitespace around ``status`` and
    ``intent``, and extensions without a ``url``. Returns what was repaired (by path, never by value)."""
    notes: list[str] = []
    for name in _TIDY_CODES:
        value = data.get(name)
        tidied = tidy_code(value)
        if tidied != value:
            data[name] = tidied
            notes.append(f"trimmed {name}")
    removed = _drop_urlless_extensions(data)
    if removed:
        notes.append(f"dropped {removed} extension(s) without url")
    return notes


def _container(root: Any, loc: tuple[Any, ...]) -> tuple[Any, Any] | None:
    """Walk ``loc`` in ``root`` and return (parent, last key) for the element it names."""
    node = root
    for part in loc[:-1]:
        in_dict = isinstance(node, dict) and isinstance(part, str) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            node = node[part]
        else:
            return None
    last = loc[-1] if loc else None
    if isinstance(node, dict) and isinstance(last, str) and last in node:
        return node, last
    if isinstance(node, list) and isinstance(last, int) and 0 <= last < len(node):
        return node, last
    return None


def _repair(data: dict[str, Any], error: dict[str, Any], defaults: dict[str, Any]) -> str | None:
    if str(error.get("type", "")).endswith("missing"):
        name = error.get("loc", ("",))[0]
        if len(error.get("loc", ())) == 1 and name in defaults and name not in data:
            data[name] = copy.deepcopy(defaults[name])
            return f"defaulted {name}"
        return None
    loc = tuple(p for p in error.get("loc", ()) if not (isinstance(p, str) and p.startswith("function-")))
    # Trim the loc back until it names something that exists (pydantic may append union/type tags).
    while loc and _container(data, loc) is None:
        loc = loc[:-1]
    if not loc:
        return None
    found = _container(data, loc)
    if found is None:  # pragma: no cover - guarded by the loop above
        return None
    parent, key = found
    path = ".".join(str(p) for p in loc)
    if error.get("type") == "list_type" and isinstance(parent[key], dict):
        parent[key] = [parent[key]]
        return f"wrapped {path} in a list"
    del parent[key]
    return f"dropped {path}"


def parse(resource: Any, defaults: dict[str, Any] | None = None) -> ParseResult:
    """Parse one R4 resource (a JSON dict) into its R4B model, repairing what real clients get wrong.

    ``defaults`` fills required top-level elements that are missing but known from context (for a draft
    order: ``intent``, ``status`` and ``subject``); nothing clinical is ever invented.
    """
    if not isinstance(resource, dict):
        return ParseResult(None, ["not an object"], "not an object")
    model_cls = MODELS.get(str(resource.get("resourceType")))
    if model_cls is None:
        return ParseResult(None, [f"unsupported resourceType {resource.get('resourceType')!r}"[:80]],
                           "unsupported type")
    result = _validate(model_cls, resource, [])
    if isinstance(result, ParseResult):
        return result
    errors = result
    data = copy.deepcopy(resource)
    repairs: list[str] = tidy(data)
    if repairs:  # the harmless malformations first: they may be all that was wrong
        result = _validate(model_cls, data, repairs)
        if isinstance(result, ParseResult):
            return result
        errors = result
    for _ in range(_MAX_REPAIRS):
        progressed = False
        for err in errors:
            note = _repair(data, dict(err), defaults or {})
            if note:
                repairs.append(note)
                progressed = True
                break  # re-validate after each repair: later locs may have shifted
        if not progressed:
            break
        result = _validate(model_cls, data, repairs)
        if isinstance(result, ParseResult):
            return result
        errors = result
    repairs.append("unrepairable")
    return ParseResult(None, repairs, _reason([dict(e) for e in errors], resource))


def _validate(model_cls: type[Any], data: Any, repairs: list[str]) -> ParseResult | list[Any]:
    """The model, or an unreadable result, as a ParseResult; the validation errors (to repair) otherwise."""
    try:
        return ParseResult(model_cls.model_validate(data), repairs)
    except ValidationError as exc:
        return list(exc.errors())
    except RecursionError:  # e.g. extensions nested ~130 deep in a FHIR server's answer (prefetch is depth-capped)
        return ParseResult(None, [*repairs, "nested too deeply"], "nested too deeply")
    except (TypeError, AttributeError, ValueError, ArithmeticError) as exc:
        # fhir_core validators can raise plain exceptions on odd input (e.g. "_status": 1.5): unreadable, not fatal
        return ParseResult(None, [*repairs, f"unparseable ({type(exc).__name__})"], "unparseable value")
