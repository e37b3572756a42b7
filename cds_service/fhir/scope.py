"""Only this patient, and never more than the limits: applied to every resource before any rule sees it.

Every resource from prefetch, the service's own queries and ``draftOrders`` whose ``subject`` / ``patient``
reference names another patient than ``context.patientId`` is dropped and counted (a Patient resource with
another id too); the count and the resource types - never the content - are logged as a data-integrity event
and shown in the card's data section. A resource without a patient reference (Medication) is kept; so is one
whose subject has no ``reference`` (identifier or display only: nothing to compare).

Limits (``clinical/data/thresholds.toml`` ``[limits]``): a prefetch key or query answer holding more than
``resources_per_key`` resources is cut to the first ones (searches ask for ``_sort=-date``, so the most recent)
and marked incomplete; more than ``draft_orders_per_request`` draft orders is refused with 400.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from cds_service.clinical.valuesets import load
from cds_service.errors import BadRequest
from cds_service.fhir.prefetch import KeyData

log = logging.getLogger("cds_service.scope")

_PATIENT_REF = re.compile(r"(?:^|/)Patient/([^/?#]+)(?:/_history/[^/]*)?$")
_TYPE = re.compile(r"[A-Z][A-Za-z]{1,39}")
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def _type(resource: Mapping[str, Any]) -> str:
    """The resource type for counts and logs: a FHIR type name, never free text."""
    value = resource.get("resourceType")
    return value if isinstance(value, str) and _TYPE.fullmatch(value) else "unknown"


@dataclass
class Scope:
    dropped: Counter[str] = field(default_factory=Counter)  # resource type -> resources of another patient
    capped: list[str] = field(default_factory=list)  # what was cut at a limit, in words

    @property
    def other_patient(self) -> tuple[tuple[str, int], ...]:
        return tuple(sorted(self.dropped.items()))


def limits() -> Mapping[str, int]:
    found: Mapping[str, int] = load().thresholds["limits"]
    return found


def referenced_patient(resource: Mapping[str, Any]) -> str | None:
    """The patient id a resource's ``subject`` / ``patient`` reference names; "" for a reference that names
    no patient (another type, unparseable); None when there is no reference to compare."""
    for element in ("subject", "patient"):
        value = resource.get(element)
        if not isinstance(value, dict):
            continue
        reference = value.get("reference")
        if not isinstance(reference, str):
            continue
        match = _PATIENT_REF.search(reference.strip())
        if match:
            return match.group(1)
        if reference.startswith("urn:uuid:"):
            return reference.removeprefix("urn:uuid:")
        return ""
    return None


def belongs(resource: Mapping[str, Any], patient_id: str) -> bool:
    if resource.get("resourceType") == "Patient":
        return resource.get("id") in (None, patient_id)
    named = referenced_patient(resource)
    return named is None or named == patient_id


def restrict(data: MutableMapping[str, KeyData], drafts: list[dict[str, Any]], patient_id: str
             ) -> tuple[list[dict[str, Any]], Scope]:
    """Drop other patients' resources from every key and from the drafts, apply the limits (in place for
    ``data``); return the drafts to use and what was done."""
    lim = limits()
    if len(drafts) > lim["draft_orders_per_request"]:
        raise BadRequest(f"draftOrders holds {len(drafts):,} resources; at most "
                         f"{lim['draft_orders_per_request']:,} are accepted", field="context.draftOrders")
    scope = Scope()
    per_key = lim["resources_per_key"]
    # The usual case, checked first at a dict lookup per resource: subject.reference is exactly
    # "Patient/<id>" (what belongs() would find too, for an id in FHIR's id syntax).
    own = f"Patient/{patient_id}" if _FHIR_ID.fullmatch(patient_id) else None
    for key, item in data.items():
        kept = [r for r in item.resources if type(subject := r.get("subject")) is dict
                and subject.get("reference") == own and r.get("resourceType") != "Patient"] if own else []
        if len(kept) != len(item.resources):  # some need the full check
            kept = []
            for resource in item.resources:
                if belongs(resource, patient_id):
                    kept.append(resource)
                else:
                    scope.dropped[_type(resource)] += 1
        if len(kept) > per_key:
            scope.capped.append(f"{key}: {len(kept) - per_key:,} resources beyond the limit of {per_key:,}")
            kept = kept[:per_key]
            item.complete = False
            item.note = f"capped at {per_key:,} resources"
        item.resources = kept
    own_drafts = []
    for resource in drafts:
        if belongs(resource, patient_id):
            own_drafts.append(resource)
        else:
            scope.dropped["draft " + _type(resource)] += 1
    if scope.dropped:
        log.warning("resources of another patient dropped", extra={
            "event": "data-integrity",
            "reason": "other-patient: " + ", ".join(f"{t} {n}" for t, n in sorted(scope.dropped.items()))})
    return own_drafts, scope
