"""The records the outcome report reads: every resource of the outcome and exposure types, grouped by the
patient it literally references, from an export directory or from a FHIR server.

An export directory holds FHIR JSON files (a Bundle, or one resource) and Bulk Data NDJSON files. A FHIR
server is read type by type (``GET [base]/[type]?_count=``) following ``next`` links up to a page cap, each
call with the service's connect and read timeouts. Every resource is checked with the R4 models; what cannot
be read, or names no patient, is counted by reason, never silently dropped.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from cds_service.fhir.models import parse
from cds_service.fhir.paging import PageLimits, Paging
from cds_service.fhir.scope import literal_patient_id

TYPES = ("Condition", "MedicationRequest", "MedicationAdministration", "MedicationStatement", "Encounter",
         "Medication")
_MAX_FILE_BYTES = 256 * 1024 * 1024  # one export file; a larger one is refused, and counted


@dataclass
class Records:
    """Resources by patient id, the Medications they may reference, and what could not be used."""

    by_patient: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    medications: dict[str, dict[str, Any]] = field(default_factory=dict)  # "Medication/<id>" -> resource
    unreadable: Counter[str] = field(default_factory=Counter)  # reason -> count
    truncated: list[str] = field(default_factory=list)  # the types whose reading stopped at the page cap

    def add(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            self.unreadable["not an object"] += 1
            return
        kind = raw.get("resourceType")
        if kind not in TYPES:
            return  # other types (Patient, Observation, ...) are not outcomes; not counted as unreadable
        result = parse(raw)
        if result.model is None:
            self.unreadable[f"{kind}: {result.reason}"] += 1
            return
        if kind == "Medication":
            self.medications[f"Medication/{raw.get('id')}"] = raw
            return
        patient = literal_patient_id(raw)
        if patient is None:
            self.unreadable[f"{kind}: no literal patient reference"] += 1
            return
        self.by_patient[patient].append(raw)


def _resources_in(document: Any) -> Iterator[Any]:
    if isinstance(document, dict) and document.get("resourceType") == "Bundle":
        for entry in document.get("entry") or []:
            yield entry.get("resource") if isinstance(entry, dict) else entry
    else:
        yield document


def from_export(directory: Path) -> Records:
    """Every ``*.json`` and ``*.ndjson`` file under ``directory`` (recursively, in name order)."""
    out = Records()
    files = sorted(p for p in directory.rglob("*") if p.suffix in (".json", ".ndjson") and p.is_file())
    for path in files:
        if path.stat().st_size > _MAX_FILE_BYTES:
            out.unreadable["export file over 256 MiB"] += 1
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        documents: list[Any] = []
        try:
            if path.suffix == ".ndjson":
                documents = [json.loads(line) for line in text.splitlines() if line.strip()]
            else:
                documents = [json.loads(text)]
        except json.JSONDecodeError:
            out.unreadable["export file not JSON"] += 1
            continue
        for document in documents:
            for raw in _resources_in(document):
                out.add(raw)
    return out


def from_server(base: str, session: requests.Session, limits: PageLimits, token: str | None = None) -> Records:
    """Every resource of :data:`TYPES` on the server at ``base`` (paged, capped: :mod:`cds_service.fhir.paging`).
    Raises ``requests``' exceptions on a transport failure, ``ValueError`` on an answer that is not a searchset
    and :class:`~cds_service.fhir.paging.ServerBusy` when the server asks to come back later."""
    out = Records()
    headers = {"Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    paging = Paging()
    for kind in TYPES:
        for raw in paging.resources_of(session, f"{base.rstrip('/')}/{kind}", {}, headers, limits, kind):
            out.add(raw)
    out.truncated = paging.capped
    return out
