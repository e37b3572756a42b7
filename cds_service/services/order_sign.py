"""The ``order-sign`` service: gather the data (prefetch, then the FHIR server), assess, answer cards."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cds_service.clinical import ClinicalInput, assess
from cds_service.config import Settings
from cds_service.errors import FhirError, FhirNotAllowed, PreconditionFailed
from cds_service.fhir import extract
from cds_service.fhir.client import Deadline, FhirClient, QueryPool
from cds_service.fhir.prefetch import resolve
from cds_service.fhir.scope import restrict
from cds_service.hooks.request import HookRequest
from cds_service.services.cards import build_cards
from cds_service.services.templates import prefetch_templates

log = logging.getLogger("cds_service.order_sign")

# Keys whose data the rules need; if *all* observation keys fail the answer is 412, otherwise the
# service answers with what it could see and says what it could not.
OBSERVATION_KEYS = ("temperature", "vitals", "labs")
KEY_WORDS = {
    "patient": "patient demographics",
    "medications": "medication orders",
    "administrations": "medication administrations",
    "statements": "medication statements",
    "temperature": "temperatures",
    "vitals": "vital signs",
    "labs": "laboratory results",
    "conditions": "conditions (NMS history)",
    "allergies": "allergies (NMS history)",
}


@dataclass
class CallReport:
    """What one call did, for the log line: no patient data, no tokens."""

    keys: dict[str, str] = field(default_factory=dict)
    fhir_requests: int = 0
    indicator: str | None = None
    score: int | None = None
    fhir_server: str = "none"  # "none", "allowed", "not-allowed"
    timings_ms: dict[str, float] = field(default_factory=dict)


class OrderSignService:
    hook = "order-sign"

    def __init__(self, settings: Settings, pool: QueryPool, clock: Callable[[], datetime]) -> None:
        self.settings = settings
        self.pool = pool
        self.clock = clock
        self.id = settings.service_id
        self.templates = prefetch_templates()

    def definition(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "id": self.id,
            "title": "Neuroleptic malignant syndrome check",
            "description": (
                "At order signing, looks for dopamine-antagonist exposure (antipsychotics, D2-blocking "
                "antiemetics) or dopaminergic withdrawal together with the pattern of neuroleptic malignant "
                "syndrome: fever, creatine kinase rise, falling serum iron, autonomic instability and the "
                "acute-phase response. Scores the structured IEC consensus criteria and shows its evidence."
            ),
            "prefetch": dict(self.templates),
            "usageRequirements": (
                "Works from prefetch alone; without prefetch it needs fhirServer (read access to Patient, "
                "MedicationRequest, Medication, Observation, Condition, AllergyIntolerance) within the "
                "operator's FHIR allowlist."
            ),
        }

    def call(self, req: HookRequest) -> tuple[dict[str, Any], CallReport]:
        started = time.perf_counter()
        report = CallReport()
        deadline = Deadline(self.settings.hook_budget_seconds)
        client: FhirClient | None = None
        if req.fhir_server:
            try:
                client = FhirClient(req.fhir_server, self.settings, deadline, token=req.access_token)
                report.fhir_server = "allowed"
            except FhirNotAllowed:
                report.fhir_server = "not-allowed"
        data = resolve(self.templates, req.prefetch, req.context, client, self.pool,
                       budget_remaining=deadline.remaining)
        report.keys = {k: (v.source if v.ok else "failed") + ("" if v.complete else "-partial")
                       for k, v in data.items()}
        report.timings_ms["data"] = (time.perf_counter() - started) * 1000
        failed_obs = [k for k in OBSERVATION_KEYS if not data[k].ok]
        if len(failed_obs) == len(OBSERVATION_KEYS):
            reason = "; ".join(f"{k}: {data[k].note}" for k in OBSERVATION_KEYS)
            if report.fhir_server == "not-allowed":
                reason += "; fhirServer is not in the service's FHIR allowlist and was not contacted"
            raise PreconditionFailed(f"required FHIR data could not be obtained ({reason})")

        drafts, scope = restrict(data, req.draft_resources(), req.patient_id)
        out = extract.Extracted()
        medication_resources = {f"Medication/{r.get('id')}": r for k in ("medications", "administrations", "statements")
                                for r in data[k].resources if r.get("resourceType") == "Medication"}
        drafts_raw = [r for r in drafts if r.get("resourceType") == "MedicationRequest"]
        record_raw = [r for r in data["medications"].resources if r.get("resourceType") == "MedicationRequest"]
        given_raw = [r for r in data["administrations"].resources
                     if r.get("resourceType") == "MedicationAdministration"]
        stated_raw = [r for r in data["statements"].resources if r.get("resourceType") == "MedicationStatement"]
        self._fetch_medications(drafts_raw + record_raw + given_raw + stated_raw, medication_resources, client,
                                deadline)
        ignored = 0
        for raw in drafts_raw:
            med = extract.medication_request(raw, is_draft=True, patient_id=req.patient_id,
                                             medications=medication_resources, out=out)
            if med is None or (not med.codings and not med.names):
                ignored += 1
            else:
                out.medications.append(med)
        for raw in record_raw:
            med = extract.medication_request(raw, is_draft=False, patient_id=None,
                                             medications=medication_resources, out=out)
            if med is not None:
                out.medications.append(med)
        extract.administrations_and_statements(given_raw, stated_raw, medication_resources, out)
        for key in OBSERVATION_KEYS:
            extract.observations(data[key].resources, out)
        extract.history(data["conditions"].resources + data["allergies"].resources, out)
        missing = [KEY_WORDS[k] for k, v in data.items() if not v.ok and k != "patient"]
        missing += [KEY_WORDS[k] + " (only partly: " + (v.note or "incomplete") + ")"
                    for k, v in data.items() if v.ok and not v.complete]
        inp = ClinicalInput(
            now=self.clock(),
            sex=extract.patient_sex(data["patient"].resources),
            medications=tuple(out.medications),
            observations=tuple(out.observations),
            history=tuple(out.history),
            missing=tuple(missing),
            ignored_orders=ignored,
            other_patient=scope.other_patient,
            capped=tuple(scope.capped),
        )
        assessment = assess(inp)
        report.indicator = assessment.indicator
        report.score = assessment.score if assessment.indicator else None
        report.fhir_requests = client.requests_made if client else 0
        report.timings_ms["total"] = (time.perf_counter() - started) * 1000
        return {"cards": build_cards(assessment, req.hook_instance, req.patient_id)}, report

    def _fetch_medications(self, requests_raw: list[dict[str, Any]], known: dict[str, Any],
                           client: FhirClient | None, deadline: Deadline) -> None:
        """Fetch server-side Medications referenced by orders, concurrently, within the budget."""
        wanted: set[str] = set()
        for raw in requests_raw:
            ref = (raw.get("medicationReference") or {}).get("reference") if isinstance(
                raw.get("medicationReference"), dict) else None
            if isinstance(ref, str) and ref.startswith("Medication/") and ref not in known:
                wanted.add(ref.split("/_history")[0])
        if not wanted or client is None:
            return
        futures = {ref: self.pool.executor.submit(client.read, ref) for ref in sorted(wanted)[:20]}
        for ref, future in futures.items():
            try:
                known[ref] = future.result(timeout=max(deadline.remaining(), 0.0) + 0.05)
            except (FhirError, FutureTimeout):
                log.info("medication reference could not be resolved", extra={"event": "medication-miss"})

