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

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from cds_service.clinical.valuesets import ATC, RXNORM, load

_PATIENT_REF = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})$")
CODES_PER_QUERY = 40


class ServerBusy(Exception):
    """The FHIR server answered 429 or 503 with ``Retry-After``: the watcher waits that long before its next pass."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"the FHIR server asks to retry after {retry_after:g} s")
        self.retry_after = retry_after


def _retry_after(response: requests.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), capped at an hour; None without one."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return min(float(value), 3600.0)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max((when - datetime.now(when.tzinfo)).total_seconds(), 0.0), 3600.0)


@dataclass(frozen=True)
class CensusLimits:
    connect_timeout: float
    read_timeout: float
    max_pages: int
    page_size: int = 200


@dataclass
class Census:
    patients: set[str] = field(default_factory=set)
    requests: int = 0
    resources: int = 0
    capped: list[str] = field(default_factory=list)  # searches that stopped at the page cap


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


def _patient(raw: Any) -> str | None:
    if not isinstance(raw, dict):
        return None
    for element in ("subject", "patient"):
        ref = raw.get(element)
        target = ref.get("reference") if isinstance(ref, dict) else None
        if isinstance(target, str) and (match := _PATIENT_REF.search(target.strip())):
            return match.group(1)
    return None


def _search(session: requests.Session, url: str, params: dict[str, str], headers: dict[str, str],
            limits: CensusLimits, out: Census, label: str, ids: set[str] | None = None) -> None:
    """Follow one search's pages; add the patients its resources name (or, with ``ids``, collect the ids)."""
    next_url: str | None = url
    query: dict[str, str] | None = {**params, "_count": str(limits.page_size)}
    pages = 0
    while next_url is not None:
        if pages == limits.max_pages:
            out.capped.append(label)
            return
        response = session.get(next_url, params=query, headers=headers,
                                timeout=(limits.connect_timeout, limits.read_timeout))
        out.requests += 1
        if response.status_code in (429, 503) and (wait := _retry_after(response)) is not None:
            raise ServerBusy(wait)
        response.raise_for_status()
        bundle = response.json()
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise ValueError(f"{label}: the server did not answer with a Bundle")
        pages += 1
        for entry in bundle.get("entry") or []:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            out.resources += 1
            if ids is not None:
                if isinstance(resource, dict) and isinstance(resource.get("id"), str):
                    ids.add(f"{resource.get('resourceType')}/{resource['id']}")
            elif (patient := _patient(resource)) is not None:
                out.patients.add(patient)
        next_url = next((link.get("url") for link in bundle.get("link") or []
                         if isinstance(link, dict) and link.get("relation") == "next"), None)
        query = None  # the next link carries the query


def find(base: str, session: requests.Session, limits: CensusLimits, *, now: datetime,
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


def changed(base: str, session: requests.Session, limits: CensusLimits, *, patients: set[str], since: datetime,
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
