"""The one engine every hook runs: gather → extract → assess → cards.

Each step is one method, shared by all hooks; what differs between hooks is a small
:class:`HookPolicy` (see :mod:`cds_service.services.order_sign`):

- **gather** (:meth:`Engine.gather`): resolve the policy's prefetch templates (prefetch first, then the
  FHIR server, see :mod:`cds_service.fhir.prefetch`) and apply the 412 rule;
- **extract** (:meth:`Engine.extract`): flatten the FHIR data into the clinical core's plain records; the
  policy decides which of the request's draft orders count as the new exposure;
- **assess**: the pure clinical core (:func:`cds_service.clinical.assess`);
- **cards** (:meth:`HookPolicy.cards`): the policy turns the assessment into the hook's cards.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cds_service import metrics
from cds_service.audit import audit_fields
from cds_service.clinical import Assessment, ClinicalInput, assess
from cds_service.config import Settings
from cds_service.errors import FhirError, FhirNotAllowed, PreconditionFailed
from cds_service.fhir import extract
from cds_service.fhir import history as fhir_history
from cds_service.fhir import medications as fhir_medications
from cds_service.fhir import observations as fhir_observations
from cds_service.fhir.client import Deadline, FhirClient, QueryPool
from cds_service.fhir.prefetch import KeyData, resolve
from cds_service.fhir.scope import restrict
from cds_service.protocol.models import ServiceDefinition
from cds_service.protocol.parse import HookRequest
from cds_service.services.card_time import CardStyle, card_style
from cds_service.services.quiet import Decisive, decisive
from cds_service.services.templates import fhir_reads, prefetch_templates

log = logging.getLogger("cds_service.engine")

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
    # For the card audit (cds_service/audit.py): rule names, the card's reasons, evidence resource ids.
    rules: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    decisive: Decisive | None = None  # the card's decisive facts, for the quiet period (services/quiet.py)
    onset: datetime | None = None  # the episode's first finding (background surveillance keys findings by it)


@dataclass
class Gathered:
    """The outcome of the gather step: per-key data, and the FHIR client for follow-up reads."""

    data: dict[str, KeyData]
    client: FhirClient | None
    deadline: Deadline
    style: CardStyle = field(default_factory=CardStyle)  # the zone of the card's times, the trend view's URL


class HookPolicy(ABC):
    """What one hook adds to the engine: its discovery entry, its prefetch, its drafts and its cards."""

    hook: str
    id: str
    title: str
    description: str
    usage_note: str = ""  # what the hook adds to the usage requirements every service shares

    @property
    def usage_requirements(self) -> str:
        """The discovery entry's usageRequirements: the FHIR reads of the templates, then the hook's note."""
        return " ".join(filter(None, [
            "Works from prefetch alone when every key is filled, with the Medications the medication searches "
            "_include; a record whose Medication is neither included nor contained is read from fhirServer, "
            "otherwise the card counts it as not identified, and a prefetched Bundle's next pages likewise "
            "(otherwise the card names the data as incomplete).",
            f"Without prefetch it needs fhirServer (read access to {', '.join(fhir_reads(self.templates))}) "
            "within the operator's FHIR allowlist.", self.usage_note]))

    @property
    def templates(self) -> Mapping[str, str]:
        """Prefetch templates (CDS Hooks 2.0 tokens only); they also drive the fallback queries. Every hook
        reads the same record today (:func:`~cds_service.services.templates.prefetch_templates`)."""
        return prefetch_templates()

    @abstractmethod
    def exposure_drafts(self, req: HookRequest) -> list[dict[str, Any]]:
        """The raw draft orders that count as the *new* exposure for this hook (may be empty)."""

    @abstractmethod
    def cards(self, assessment: Assessment, req: HookRequest, gathered: Gathered) -> list[dict[str, Any]]:
        """The hook's cards for this assessment (an empty list: no card); ``gathered`` holds the record as
        read, for suggestions that must carry a whole resource (an ``update`` action)."""

    def definition(self) -> dict[str, Any]:
        """The discovery entry, through its typed wire model (no null or empty members)."""
        return ServiceDefinition(hook=self.hook, id=self.id, title=self.title, description=self.description,
                                 prefetch=dict(self.templates) or None,
                                 usageRequirements=self.usage_requirements).model_dump(exclude_none=True)


class Engine:
    """Runs a :class:`HookPolicy` over one request. One per process, shared by every hook."""

    def __init__(self, settings: Settings, pool: QueryPool, clock: Callable[[], datetime]) -> None:
        self.settings = settings
        self.pool = pool
        self.clock = clock

    def evaluate(self, policy: HookPolicy, req: HookRequest, report: CallReport) -> tuple[Assessment, Gathered]:
        """Gather, extract and assess: the assessment behind a hook's cards (and the trend view's series)."""
        started = time.perf_counter()
        gathered = self.gather(policy, req, report)
        report.timings_ms["data"] = (time.perf_counter() - started) * 1000
        return assess(self.extract(gathered, policy.exposure_drafts(req), req)), gathered

    def run(self, policy: HookPolicy, req: HookRequest) -> tuple[dict[str, Any], CallReport]:
        started = time.perf_counter()
        report = CallReport()
        assessment, gathered = self.evaluate(policy, req, report)
        report.rules, report.reasons, report.evidence = audit_fields(assessment)
        report.decisive = decisive(assessment)
        report.onset = assessment.onset
        report.fhir_requests = gathered.client.requests_made if gathered.client else 0
        cards = policy.cards(assessment, req, gathered)
        answered = cards[0].get("indicator") if cards else None  # what the clinician sees, after the policy
        report.indicator = answered
        report.score = assessment.score if answered else None
        report.timings_ms["total"] = (time.perf_counter() - started) * 1000
        return {"cards": cards}, report

    # --- gather ------------------------------------------------------------------------------------

    def gather(self, policy: HookPolicy, req: HookRequest, report: CallReport) -> Gathered:
        """Every template key from prefetch or the FHIR server; 412 when no observation key could be had."""
        deadline = Deadline(self.settings.hook_budget_seconds)
        client: FhirClient | None = None
        refusal = ""
        if req.fhir_server:
            try:
                client = FhirClient(req.fhir_server, self.settings, deadline, token=req.access_token)
                report.fhir_server = "allowed"
            except FhirNotAllowed as exc:  # the message names the rule broken, never the URL itself
                report.fhir_server = "not-allowed"
                refusal = exc.message
        data = resolve(policy.templates, req.prefetch, req.context, client, self.pool,
                       budget_remaining=deadline.remaining, now=self.clock(), first=OBSERVATION_KEYS)
        report.keys = {k: (v.source if v.ok else "failed") + ("" if v.complete else "-partial")
                       for k, v in data.items()}
        observation_keys = [k for k in OBSERVATION_KEYS if k in data]
        failed_obs = [k for k in observation_keys if not data[k].ok]
        if observation_keys and len(failed_obs) == len(observation_keys):
            reason = "; ".join(f"{k}: {data[k].note}" for k in observation_keys)
            if report.fhir_server == "not-allowed":
                reason += f"; fhirServer was not contacted: {refusal}"
            raise PreconditionFailed(f"required FHIR data could not be obtained ({reason})")
        style = card_style(self.settings.time_zone, self.settings.public_base_url, data)
        return Gathered(data, client, deadline, style)

    # --- extract -----------------------------------------------------------------------------------

    def extract(self, gathered: Gathered, drafts: list[dict[str, Any]], req: HookRequest) -> ClinicalInput:
        """Flatten the gathered FHIR data and the hook's exposure drafts into the core's input."""
        data = gathered.data
        # only this patient, within the limits (cds_service/fhir/scope.py), before anything reads the data
        drafts, scope = restrict(data, drafts, req.patient_id, req.fhir_server, self.settings)
        out = extract.Extracted()
        records = fhir_medications.exposure_records(data)
        medication_resources = records.medications
        drafts_raw = [r for r in drafts if r.get("resourceType") == "MedicationRequest"]
        record_raw = records.requests
        self._fetch_medications(drafts_raw + records.all(), medication_resources, gathered.client, gathered.deadline)
        unidentified = unidentified_medications(drafts_raw + records.all(), medication_resources,
                                                gathered.client.base_url if gathered.client else None)
        ignored = 0
        for raw in drafts_raw:
            med = fhir_medications.medication_request(raw, is_draft=True, patient_id=req.patient_id,
                                                      medications=medication_resources, out=out)
            if med is None or (not med.codings and not med.names):
                ignored += 1
            else:
                out.medications.append(med)
        for raw in record_raw:
            med = fhir_medications.medication_request(raw, is_draft=False, patient_id=None,
                                                      medications=medication_resources, out=out)
            if med is not None:
                out.medications.append(med)
        fhir_medications.administrations_and_statements(records.administrations, records.statements,
                                                        medication_resources, out)
        for key in OBSERVATION_KEYS:
            fhir_observations.observations(data[key].resources, out)
        fhir_history.history(data["conditions"].resources + data["allergies"].resources, out)
        metrics.unreadable_resources(out.unread_labels())
        missing = [KEY_WORDS.get(k, k) for k, v in data.items() if not v.ok and k != "patient"]
        missing += [KEY_WORDS.get(k, k) + " (only partly: " + (v.note or "incomplete") + ")"
                    for k, v in data.items() if v.ok and not v.complete]
        return ClinicalInput(
            now=self.clock(),
            sex=fhir_history.patient_sex(data["patient"].resources),
            medications=tuple(out.medications),
            observations=tuple(out.observations),
            history=tuple(out.history),
            missing=tuple(missing),
            ignored_orders=ignored,
            other_patient=scope.other_patient,
            capped=tuple(scope.capped),
            unreadable=out.unread_items(),
            duplicates=out.duplicates + records.duplicates,
            unidentified_medications=unidentified,
        )

    def _fetch_medications(self, records: list[dict[str, Any]], known: dict[str, Any],
                           client: FhirClient | None, deadline: Deadline) -> set[str]:
        """Read from the FHIR server the Medications that records reference and neither prefetch nor the
        searches' ``_include`` brought, concurrently, within the budget; return the references that failed.

        An absolute reference on the FHIR server's base is read as ``Medication/<id>`` and then known under
        both spellings (the extract step looks references up as written)."""
        base = client.base_url if client is not None else None
        refs = {ref for ref in map(_medication_reference, records) if ref is not None}
        relative = {ref: _on_server(ref, base) for ref in refs}
        wanted = {rel for rel in relative.values() if rel is not None and rel not in known}
        failed: set[str] = set()
        if wanted and client is not None:
            ordered = sorted(wanted)
            futures = {ref: self.pool.executor.submit(client.read, ref) for ref in ordered[:MEDICATION_READS]}
            failed = set(ordered[MEDICATION_READS:])
            for ref, future in futures.items():
                try:
                    known[ref] = future.result(timeout=max(deadline.remaining(), 0.0) + 0.05)
                except (FhirError, FutureTimeout):
                    future.cancel()
                    failed.add(ref)
            if failed:
                log.info("medication reference could not be resolved",
                         extra={"event": "medication-miss", "reason": f"{len(failed)} Medication(s)"})
        for ref, rel in relative.items():
            if rel is not None and ref != rel and rel in known:
                known[ref] = known[rel]
        return failed


MEDICATION_READS = 20  # Medication reads per call at most (each is one request within the hook's budget)


def _medication_reference(raw: Mapping[str, Any]) -> str | None:
    """The ``medicationReference.reference`` of a record that names its drug only by reference (no
    ``medicationCodeableConcept``), without its ``_history`` part; None otherwise."""
    element = raw.get("medicationReference")
    if raw.get("medicationCodeableConcept") is not None or not isinstance(element, dict):
        return None
    reference = element.get("reference")
    return reference.strip().split("/_history")[0] if isinstance(reference, str) and reference.strip() else None


def _on_server(ref: str, base: str | None) -> str | None:
    """``Medication/<id>`` for a relative reference or an absolute one on ``base``; None otherwise."""
    if base is not None and ref.startswith(base.rstrip("/") + "/"):
        ref = ref.removeprefix(base.rstrip("/") + "/")
    return ref if ref.startswith("Medication/") and ref.count("/") == 1 and len(ref) > 11 else None


def unidentified_medications(records: list[dict[str, Any]], known: Mapping[str, Any], base: str | None
                             ) -> tuple[tuple[str, int], ...]:
    """Medication records whose drug could not be identified, counted by why: ``medicationReference`` only,
    with no ``display``, to a Medication that is neither contained, nor in prefetch (or its ``_include``),
    nor readable from the FHIR server (``base``: None without one), or that has no ``code``."""
    why: Counter[str] = Counter()
    for raw in records:
        ref = _medication_reference(raw)
        element = raw.get("medicationReference")
        if ref is None or (isinstance(element, dict) and isinstance(element.get("display"), str)
                           and element["display"].strip()):
            continue
        if ref.startswith("#"):
            contained = raw.get("contained")
            target = next((c for c in contained if isinstance(c, dict) and c.get("id") == ref[1:]), None) if (
                isinstance(contained, list)) else None
            if target is None:
                why["contained Medication missing"] += 1
                continue
        elif ref in known:
            target = known[ref]
        elif _on_server(ref, base) is not None:
            why["Medication not in prefetch, could not be read from the FHIR server" if base is not None
                else "Medication not in prefetch, no FHIR server"] += 1
            continue
        else:
            why["reference to a Medication elsewhere"] += 1
            continue
        if not isinstance(target, dict) or not isinstance(target.get("code"), dict):
            why["Medication without a code"] += 1
    return tuple(sorted(why.items()))


class CdsService:
    """One entry of the discovery document: a policy run by the shared engine."""

    def __init__(self, policy: HookPolicy, engine: Engine) -> None:
        self.policy = policy
        self.engine = engine
        self.hook = policy.hook
        self.id = policy.id

    @property
    def templates(self) -> Mapping[str, str]:
        return self.policy.templates

    def definition(self) -> dict[str, Any]:
        return self.policy.definition()

    def call(self, req: HookRequest) -> tuple[dict[str, Any], CallReport]:
        return self.engine.run(self.policy, req)
