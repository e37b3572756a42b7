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
from fhir.resources.R4B.medication import Medication
from fhir.resources.R4B.medicationadministration import MedicationAdministration
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.medicationstatement import MedicationStatement
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from pydantic import ValidationError

__all__ = [
    "AllergyIntolerance",
    "Condition",
    "Medication",
    "MedicationAdministration",
    "MedicationRequest",
    "MedicationStatement",
    "Observation",
    "ParseResult",
    "Patient",
    "parse",
]

MODELS: dict[str, type[FHIRAbstractModel]] = {
    "AllergyIntolerance": AllergyIntolerance,
    "Condition": Condition,
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
        return ParseResult(None, ["not an object"])
    model_cls = MODELS.get(str(resource.get("resourceType")))
    if model_cls is None:
        return ParseResult(None, [f"unsupported resourceType {resource.get('resourceType')!r}"[:80]])
    try:
        return ParseResult(model_cls.model_validate(resource))
    except ValidationError as exc:
        errors = exc.errors()
    except RecursionError:  # e.g. extensions nested ~130 deep in a FHIR server's answer (prefetch is depth-capped)
        return ParseResult(None, ["nested too deeply"])
    except (TypeError, AttributeError, ValueError, ArithmeticError) as exc:
        # fhir_core validators can raise plain exceptions on odd input (e.g. "_status": 1.5): unreadable, not fatal
        return ParseResult(None, [f"unparseable ({type(exc).__name__})"])
    data = copy.deepcopy(resource)
    repairs: list[str] = []
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
        try:
            return ParseResult(model_cls.model_validate(data), repairs)
        except ValidationError as exc:
            errors = exc.errors()
        except RecursionError:
            return ParseResult(None, [*repairs, "nested too deeply"])
        except (TypeError, AttributeError, ValueError, ArithmeticError) as exc:
            return ParseResult(None, [*repairs, f"unparseable ({type(exc).__name__})"])
    repairs.append("unrepairable")
    return ParseResult(None, repairs)
