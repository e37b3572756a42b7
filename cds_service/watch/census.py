"""Who to watch: the patients with a dopamine antagonist or a dopaminergic drug in their record now.

Searches by code, so the server returns only those records (the value sets' RxNorm and ATC codes, in
chunks that keep the URL short):

- ``MedicationRequest?status=active,on-hold&code=…`` (antagonists and dopaminergic drugs: a withdrawal is
  an order that stops, so dopaminergic orders stopped in the withdrawal window are read too);
- ``MedicationAdministration?code=…&effective-time=ge…`` (doses within the depot window, the longest the rules
  count a dose);
- ``MedicationStatement?status=active&code=…``.

- ``Medication?code=…``, then the orders and doses that reference those Medications.

What a code search cannot see: a record that names its drug only in text (a brand or a national name); those
patients are found by the hooks when a chart is opened, not by the watcher (documented with the numbers).
Every request has the connect/read timeouts and the page cap of the settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import requests

from cds_service.clinical.valuesets import ATC, RXNORM, load
from cds_service.fhir.paging import PageLimits, Paging
from cds_service.fhir.scope import literal_patient_id

CODES_PER_QUERY = 40


@dataclass
class Census(Paging):
    patients: set[str] = field(default_factory=set)
    resources: int = 0


def drug_tokens() -> list[str]:
    """``system|code`` of every antagonist and dopaminergic code the rules know."""
    vs = load()
    tokens = [f"{RXNORM}|{code}" for code, d in sorted(vs.drugs_by_code.items())
              if d.role in ("antagonist", "dopaminergic")]
    for system in sorted(vs.atc_systems or {ATC}):  # WHO's ATC and national editions (BfArM's ATC)
        tokens += [f"{system}|{code}" for code, d in sorted(vs.drugs_by_atc.items())
                   if d.role in ("antagonist", "dopaminergic")]
    return tokens


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _search(session: requests.Session, url: str, params: dict[str, str], headers: dict[str, str],
            limits: PageLimits, out: Census, label: str, ids: set[str] | None = None) -> None:
    """One search, every page: add the patients its resources name (or, with ``ids``, collect the ids)."""
    for resource in out.resources_of(session, url, params, headers, limits, label):
        out.resources += 1
        if not isinstance(resource, dict):
            continue
        if ids is not None:
            if isinstance(resource.get("id"), str):
                ids.add(f"{resource.get('resourceType')}/{resource['id']}")
        elif (patient := literal_patient_id(resource)) is not None:
            out.patients.add(patient)


def find(base: str, session: requests.Session, limits: PageLimits, *, now: datetime,
         token: str | None = None) -> Census:
    """The patients to evaluate this pass. Raises ``requests`` exceptions or ValueError when the server fails."""
    vs = load()
    headers = {"Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    exposure = vs.thresholds["exposure"]
    # a dose counts for as long as the rules let it: the depot window covers long-acting injectables too
    since_dose = (now - timedelta(days=float(exposure["depot_window_days"]))).isoformat()
    since_stop = (now - timedelta(days=float(exposure["withdrawal_window_days"]))).isoformat()
    out = Census()
    medications: set[str] = set()
    root = base.rstrip("/")
    for chunk in _chunks(drug_tokens(), CODES_PER_QUERY):
        codes = ",".join(chunk)
        _search(session, f"{root}/MedicationRequest", {"status": "active,on-hold", "code": codes}, headers,
                limits, out, "active orders")
        _search(session, f"{root}/MedicationRequest", {"status": "stopped,completed", "code": codes,
                                                       "_lastUpdated": f"ge{since_stop}"}, headers, limits, out,
                "orders stopped in the withdrawal window")
        _search(session, f"{root}/MedicationAdministration", {"code": codes, "effective-time": f"ge{since_dose}"},
                headers, limits, out, "doses in the exposure window")
        _search(session, f"{root}/MedicationStatement", {"status": "active", "code": codes}, headers, limits, out,
                "active statements")
        _search(session, f"{root}/Medication", {"code": codes}, headers, limits, out, "medications", ids=medications)
    # records that name their drug by a reference to a Medication: found through the Medications' ids
    for chunk in _chunks(sorted(medications), CODES_PER_QUERY):
        refs = ",".join(chunk)
        _search(session, f"{root}/MedicationRequest", {"status": "active,on-hold", "medication": refs}, headers,
                limits, out, "active orders by Medication")
        _search(session, f"{root}/MedicationAdministration", {"medication": refs, "effective-time": f"ge{since_dose}"},
                headers, limits, out, "doses by Medication")
    return out


def changed(base: str, session: requests.Session, limits: PageLimits, *, patients: set[str], since: datetime,
            token: str | None = None) -> Census:
    """Which of ``patients`` have a reading the rules read, or a medication record, written since ``since`` (the
    server's clock: ``_lastUpdated``). Asked per chunk of watched patients, so the cost grows with them, not with
    the hospital's activity. No new data changes no verdict but the passing of time, which only ends findings;
    the periodic full pass covers that."""
    headers = {"Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    out = Census()
    root = base.rstrip("/")
    mark = f"gt{since.isoformat()}"
    for chunk in _chunks(sorted(patients), CODES_PER_QUERY):
        refs = ",".join(f"Patient/{p}" for p in chunk)
        for kind in ("Observation", "MedicationRequest", "MedicationAdministration", "MedicationStatement"):
            _search(session, f"{root}/{kind}", {"subject": refs, "_lastUpdated": mark}, headers, limits, out,
                    f"new {kind} records")
    return out
