"""Where a new worklist entry goes besides the store: a webhook (JSON) and, when configured, the FHIR server
as a ``Task``.

Why a Task: it is the R4 resource for "someone should do something for this patient" with a workflow state
(requested → accepted → completed / rejected with a reason) that pharmacist and rapid-response worklists in
EHRs already display; a Flag would show on every chart without a state, and a DetectedIssue describes a
problem with an order rather than asking for a review. The Task carries what the card carries (the summary,
the indicator, references to the evidence), nothing more of the patient.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import requests

from cds_service.store.worklist import Entry

TASK_CODE_SYSTEM = "https://github.com/nms-cds/nms-cds/worklist"
PRIORITY = {"critical": "stat", "warning": "urgent"}


def entry_json(entry: Entry) -> dict[str, Any]:
    """The webhook body: the entry as the worklist shows it."""
    return {"id": entry.id, "patient": entry.patient_ref, "indicator": entry.indicator, "summary": entry.summary,
            "card_uuid": entry.card_uuid, "evidence": list(entry.evidence), "state": entry.state,
            "created_at": datetime.fromtimestamp(entry.created_at, UTC).isoformat()}


def task(entry: Entry, *, now: datetime) -> dict[str, Any]:
    """A FHIR R4 Task asking for a review of a possible NMS finding."""
    orders = [ref for ref in entry.evidence if ref.startswith("MedicationRequest/")]
    body: dict[str, Any] = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "proposal",
        "priority": PRIORITY.get(entry.indicator, "routine"),
        "code": {"coding": [{"system": TASK_CODE_SYSTEM, "code": "review-possible-nms",
                             "display": "Review possible neuroleptic malignant syndrome"}]},
        "description": f"Possible NMS ({entry.indicator}): {entry.summary}"[:1000],
        "for": {"reference": entry.patient_ref},
        "authoredOn": now.isoformat(),
        "identifier": [{"system": TASK_CODE_SYSTEM, "value": entry.card_uuid}],
        "input": [{"type": {"text": "evidence"}, "valueReference": {"reference": ref}}
                  for ref in entry.evidence[:20]],
    }
    if orders:
        body["focus"] = {"reference": orders[0]}
    return body


class Deliverer:
    """Sends entries to the configured webhook and FHIR server; reports success only when every target took it."""

    def __init__(self, session: requests.Session, *, webhook: str | None, fhir_base: str | None,
                 timeout: tuple[float, float]) -> None:
        self.session = session
        self.webhook = webhook
        self.fhir_base = fhir_base.rstrip("/") if fhir_base else None
        self.timeout = timeout

    @property
    def targets(self) -> Sequence[str]:
        return [name for name, on in (("webhook", self.webhook), ("fhir-task", self.fhir_base)) if on]

    def send(self, entry: Entry, *, now: datetime, token: str | None) -> bool:
        if self.webhook:
            answer = self.session.post(self.webhook, json=entry_json(entry), timeout=self.timeout)
            if answer.status_code >= 300:
                return False
        if self.fhir_base:
            headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json",
                       # one Task per card uuid, even when a delivery is retried
                       "If-None-Exist": f"identifier={TASK_CODE_SYSTEM}|{entry.card_uuid}"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            answer = self.session.post(f"{self.fhir_base}/Task", json=task(entry, now=now), headers=headers,
                                       timeout=self.timeout)
            if answer.status_code >= 300:
                return False
        return True
