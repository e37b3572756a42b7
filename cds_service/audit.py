"""Card audit: what is recorded about every card served (see docs/operations.md "Persistence").

:func:`audit_fields` reads an assessment (the rules that fired, the card's reasons, the evidence
resource ids); :func:`card_records` combines them with the cards and the request. The patient id is
stored as a keyed hash (HMAC-SHA256) unless the operator opts in with ``NMS_CDS_AUDIT_PATIENT_IDS``; the
quiet period's key (:func:`quiet_key`, service and patient) and the card's decisive facts
(:mod:`cds_service.services.quiet`) are always hashes and plain facts, never the patient id.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Any

from cds_service.clinical.model import Assessment
from cds_service.store.base import CardRecord


def audit_fields(a: Assessment) -> tuple[list[str], list[str], list[str]]:
    """(rules fired, reasons, evidence resource ids) of one assessment."""
    rules = [c.name for c in a.criteria if c.met]
    rules += [f.name for f in a.findings if f.present]
    if a.history:
        rules.append("nms-history")
    if a.im_ck_artefact:
        rules.append("im-ck-artefact")
    evidence: list[str] = [e.ref for e in a.exposures if e.ref]
    for c in a.criteria:
        evidence += [r.ref for r in c.evidence if r.ref]
    for f in a.findings:
        evidence += [r.ref for r in f.evidence if r.ref]
    evidence += [h.ref for h in a.history if h.ref]
    return rules, list(a.reasons), list(dict.fromkeys(evidence))


def patient_token(patient_id: str | None, key: bytes, *, opt_in: bool) -> str | None:
    if not patient_id:
        return None
    if opt_in:
        return patient_id
    return "hmac-sha256:" + hmac.new(key, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def quiet_key(service_id: str, patient_id: str | None, iss: str | None, key: bytes) -> str | None:
    """The quiet period's lookup key: a keyed hash of (service, client, patient), never the id (no opt-in here).
    The client's ``iss`` is part of it: patient ids are unique within one EHR only."""
    if not patient_id:
        return None
    message = f"{service_id}\x00{iss or ''}\x00{patient_id}".encode()
    return "quiet:" + hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def _pseudonymised(value: Any, patient_id: str, patient: str) -> Any:
    """``value`` with every reference to ``Patient/<patient_id>`` (relative or absolute) and every
    ``patientId``-valued member rewritten to the audit's patient token."""
    if isinstance(value, dict):
        return {k: _pseudonymised(v, patient_id, patient) for k, v in value.items()}
    if isinstance(value, list):
        return [_pseudonymised(v, patient_id, patient) for v in value]
    if isinstance(value, str) and (value == f"Patient/{patient_id}" or value.endswith(f"/Patient/{patient_id}")):
        return value[: -len(patient_id)] + patient
    return value


def stored_card(card: dict[str, Any], patient_id: str | None, patient: str | None) -> str:
    """The card as the audit keeps it for silent mode: compact JSON, patient references as the audit stores the
    patient (its keyed hash unless the operator opted in to ids, then unchanged)."""
    if patient_id and patient and patient != patient_id:
        card = _pseudonymised(card, patient_id, patient)
    return json.dumps(card, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def card_records(cards: Sequence[dict[str, Any]], *, served_at: float, hook: str, service_id: str,
                 hook_instance: str, score: int | None, rules: Sequence[str], reasons: Sequence[str],
                 evidence: Sequence[str], iss: str | None, patient: str | None, quiet: str | None = None,
                 decisive: str | None = None, silent: bool = False, patient_id: str | None = None,
                 knowledge_version: str | None = None) -> list[CardRecord]:
    """One record per card; ``silent``: cards not returned, each kept whole (:func:`stored_card`)."""
    return [CardRecord(card_uuid=str(card.get("uuid")), served_at=served_at, hook=hook, service_id=service_id,
                       hook_instance=hook_instance, indicator=str(card.get("indicator")), score=score,
                       rules=tuple(rules), reasons=tuple(reasons), evidence=tuple(evidence), client_iss=iss,
                       patient=patient, quiet_key=quiet, decisive=decisive, mode="silent" if silent else "live",
                       card=stored_card(card, patient_id, patient) if silent else None,
                       knowledge_version=knowledge_version)
            for card in cards if card.get("uuid")]
