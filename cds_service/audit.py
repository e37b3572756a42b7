"""Card audit: what is recorded about every card served (see docs/operations.md "Persistence").

:func:`audit_fields` reads an assessment (the rules that fired, the card's reasons, the evidence
resource ids); :func:`card_records` combines them with the cards and the request. The patient id is
stored as a keyed hash (HMAC-SHA256) unless the operator opts in with ``NMS_CDS_AUDIT_PATIENT_IDS``.
"""

from __future__ import annotations

import hashlib
import hmac
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


def card_records(cards: Sequence[dict[str, Any]], *, served_at: float, hook: str, service_id: str,
                 hook_instance: str, score: int | None, rules: Sequence[str], reasons: Sequence[str],
                 evidence: Sequence[str], iss: str | None, patient: str | None,
                 knowledge_version: str | None = None) -> list[CardRecord]:
    return [CardRecord(card_uuid=str(card.get("uuid")), served_at=served_at, hook=hook, service_id=service_id,
                       hook_instance=hook_instance, indicator=str(card.get("indicator")), score=score,
                       rules=tuple(rules), reasons=tuple(reasons), evidence=tuple(evidence), client_iss=iss,
                       patient=patient, knowledge_version=knowledge_version)
            for card in cards if card.get("uuid")]
