"""Only this patient, and never more than the limits: applied to every resource before any rule sees it.

A resource is this patient's only when its ``subject`` / ``patient`` reference *proves* it: a literal
reference that resolves to ``Patient/{context.patientId}`` on the FHIR server in use:

- relative ``Patient/<id>`` (optionally ``/_history/<v>``);
- absolute on the request's ``fhirServer`` base, ``<fhirServer>/Patient/<id>`` (scheme, host and port
  compared after normalisation, :mod:`cds_service.net.urls`); without ``fhirServer`` no absolute reference
  is this patient's;
- ``urn:uuid:<id>`` where ``<id>`` is the patient id itself (a transaction Bundle's fullUrl of that Patient).

Everything else is excluded and counted, per resource type and why: another patient's reference (counted
under the bare type), an absolute reference on another server (``other server``), a reference that holds
only an ``identifier`` (``by identifier``) or only a ``display`` (``by display``), or a record of a
patient-data type without any patient reference (``no reference``). A Patient resource with another id is
excluded too. Resources with no patient link by type (Medication) are kept. A draft order without any
``subject`` is kept (the hook's context names its patient); a draft whose subject names another or an
unproven patient is excluded like any other resource. The counts and the resource types - never the
content - are logged as a data-integrity event and shown in the card's data section.

Limits (:class:`~cds_service.config.Settings`): a prefetch key or query answer holding more than
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

from cds_service.config import Settings
from cds_service.errors import BadRequest
from cds_service.fhir.prefetch import KeyData
from cds_service.net.urls import ParsedUrl, UrlRefused, parse_url

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


#: Resource types that always concern a patient: without a patient reference they prove nothing.
PATIENT_DATA = frozenset({
    "Observation", "Condition", "AllergyIntolerance", "MedicationRequest", "MedicationAdministration",
    "MedicationStatement", "MedicationDispense", "ServiceRequest", "Procedure", "Encounter", "DiagnosticReport",
})
_ELEMENTS = {"AllergyIntolerance": "patient"}  # the patient element of a type; "subject" otherwise
_HISTORY = re.compile(r"/_history/[^/]*$")


def referenced_patient(resource: Mapping[str, Any]) -> str | None:
    """The patient id a resource's ``subject`` / ``patient`` reference names (relative, absolute on any
    server, ``urn:uuid``); "" for a reference that names no patient (another type, unparseable); None when
    there is no literal reference to compare."""
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


def literal_patient_id(resource: Mapping[str, Any]) -> str | None:
    """The id in a literal ``Patient/<id>`` reference (relative or absolute, a ``_history`` part dropped) of the
    resource's ``subject`` or ``patient``; None without one (a logical reference, ``urn:uuid``, another type)."""
    for element in ("subject", "patient"):
        value = resource.get(element)
        reference = value.get("reference") if isinstance(value, Mapping) else None
        match = _PATIENT_REF.search(reference.strip()) if isinstance(reference, str) else None
        if match and _FHIR_ID.fullmatch(match.group(1)):
            return match.group(1)
    return None


def _server(base: str | None) -> ParsedUrl | None:
    if not base:
        return None
    try:
        return parse_url(base, allow_query=False)
    except UrlRefused:
        return None


def unproven(resource: Mapping[str, Any], patient_id: str, base: ParsedUrl | None = None, *,
             draft: bool = False) -> str | None:
    """Why ``resource`` is not proven to be the patient's (a short label for counts), None when it is.

    ``base``: the parsed ``fhirServer`` of the request (absolute references on it are literal references).
    """
    kind = resource.get("resourceType")
    if kind == "Patient":
        return None if resource.get("id") in (None, patient_id) else "another patient"
    elements = [e for e in ("subject", "patient") if e in resource]
    if not elements:
        return "no reference" if kind in PATIENT_DATA and not draft else None
    value = resource.get(_ELEMENTS.get(str(kind), "subject")) if len(elements) > 1 else resource.get(elements[0])
    if not isinstance(value, dict):
        return "no reference"
    reference = value.get("reference")
    if not isinstance(reference, str) or not reference.strip():
        if value.get("identifier") is not None:
            return "by identifier"
        return "by display" if value.get("display") is not None else "no reference"
    reference = _HISTORY.sub("", reference.strip())
    if reference.startswith("urn:uuid:"):
        return None if reference.removeprefix("urn:uuid:") == patient_id else "another patient"
    if "://" not in reference:
        match = _PATIENT_REF.fullmatch(reference)
        if match is None or reference.count("/") != 1:
            return "another patient"  # another type, or a path that is not Patient/<id>
        return None if match.group(1) == patient_id else "another patient"
    try:
        target = parse_url(reference, allow_query=False)
    except UrlRefused:
        return "other server"
    if base is None or not target.is_under(base) or target.path == base.path:
        return "other server"
    match = _PATIENT_REF.fullmatch(target.path.removeprefix(base.path + "/"))
    return None if match is not None and match.group(1) == patient_id else "another patient"


def belongs(resource: Mapping[str, Any], patient_id: str, base: str | None = None) -> bool:
    """Whether ``resource`` is proven to be the patient's (see the module text); ``base``: ``fhirServer``."""
    return unproven(resource, patient_id, _server(base)) is None


def _label(resource: Mapping[str, Any], why: str) -> str:
    return _type(resource) if why == "another patient" else f"{_type(resource)} ({why})"


def restrict(data: MutableMapping[str, KeyData], drafts: list[dict[str, Any]], patient_id: str,
             fhir_server: str | None, settings: Settings) -> tuple[list[dict[str, Any]], Scope]:
    """Drop every resource not proven to be the patient's from every key and from the drafts, apply the
    limits of ``settings`` (in place for ``data``); return the drafts to use and what was done.
    ``fhir_server``: the request's ``fhirServer`` (absolute references on it count as literal references)."""
    if len(drafts) > settings.draft_orders_per_request:
        raise BadRequest(f"draftOrders holds {len(drafts):,} resources; at most "
                         f"{settings.draft_orders_per_request:,} are accepted", field="context.draftOrders")
    scope = Scope()
    per_key = settings.resources_per_key
    # The usual case, checked first at a dict lookup per resource: subject.reference is exactly
    # "Patient/<id>" (what belongs() would find too, for an id in FHIR's id syntax).
    own = f"Patient/{patient_id}" if _FHIR_ID.fullmatch(patient_id) else None
    base = _server(fhir_server)
    for key, item in data.items():
        kept = [r for r in item.resources if type(subject := r.get("subject")) is dict
                and subject.get("reference") == own and r.get("resourceType") != "Patient"] if own else []
        if len(kept) != len(item.resources):  # some need the full check
            kept = []
            for resource in item.resources:
                why = unproven(resource, patient_id, base)
                if why is None:
                    kept.append(resource)
                else:
                    scope.dropped[_label(resource, why)] += 1
        if len(kept) > per_key:
            scope.capped.append(f"{key}: {len(kept) - per_key:,} resources beyond the limit of {per_key:,}")
            kept = kept[:per_key]
            item.complete = False
            item.note = f"capped at {per_key:,} resources"
        item.resources = kept
    own_drafts = []
    for resource in drafts:
        why = unproven(resource, patient_id, base, draft=True)
        if why is None:
            own_drafts.append(resource)
        else:
            scope.dropped["draft " + _label(resource, why)] += 1
    if scope.dropped:
        log.warning("resources not proven to be this patient's dropped", extra={
            "event": "data-integrity",
            "reason": "other-patient: " + ", ".join(f"{t} {n}" for t, n in sorted(scope.dropped.items()))})
    return own_drafts, scope
