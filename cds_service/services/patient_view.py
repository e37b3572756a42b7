"""The ``patient-view`` policy: the chart is opened; watch the patients already exposed.

No draft is involved: the record's own exposures (orders, and what the clinical core reads besides) are
assessed with the same criteria and indicator policy as at order signing. The policy is quiet unless
there is a finding: a ``critical`` or ``warning`` card, never the ``info`` "check incomplete" card and
never a card for a patient who is merely on an antipsychotic.

Suggestions (the clinician chooses; nothing is applied without a click, no ``systemActions``):

- **Order the missing labs** (CK, serum iron, WBC, creatinine, potassium not resulted in the lab window):
  ``create`` actions of draft ServiceRequests, as at order signing.
- **Put an active dopamine-antagonist order on hold** — an ``update`` action, offered only when all hold:
  the card is ``critical`` (the full pattern: exposure before onset, hyperthermia and CK ≥ 4×ULN or iron in
  the NMS range); the order is a MedicationRequest of the record, read whole (prefetch or the FHIR server)
  with an ``id``, ``status`` ``active`` and this patient as subject; the drug is a dopamine antagonist (never
  a dopaminergic drug, whose withdrawal is the problem, never lithium). The action carries the whole
  resource as read (the spec's ``update`` replaces the resource) with only ``status`` set to ``on-hold`` and
  a ``statusReason`` text added; ``meta.versionId`` is kept, so a client that updates with ``If-Match``
  detects a concurrent change. ``on-hold`` is reversible (back to ``active``); the service never suggests
  ``cancelled``, ``stopped`` or ``delete`` for a signed order, and ``isRecommended`` is false: stopping the
  drug is the bedside team's decision after assessing rigidity and mental status.

Cards are identified by their evidence (:mod:`cds_service.services.repeat`): repeated openings of the
same chart with the same evidence show the same card with the same uuid; a card the clinician answered is not
shown again within the quiet period unless it worsens or a decisive finding is new
(:mod:`cds_service.services.quiet`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cds_service.clinical import Assessment
from cds_service.config import Settings
from cds_service.protocol import models
from cds_service.protocol.parse import HookRequest
from cds_service.services.cards import build_cards, card_uuid
from cds_service.services.engine import Gathered, HookPolicy
from cds_service.services.markup import plain, ref
from cds_service.services.repeat import evidence_key

MAX_HOLDS = 3
HOLD_REASON = ("Possible neuroleptic malignant syndrome (nms-cds card): held pending bedside assessment of "
               "rigidity and mental status")


def _subject_is(resource: Mapping[str, Any], patient_id: str) -> bool:
    subject = resource.get("subject")
    return isinstance(subject, dict) and subject.get("reference") == f"Patient/{patient_id}"


def hold_suggestions(a: Assessment, gathered: Gathered, patient_id: str, seed: str) -> list[models.Suggestion]:
    """``update`` suggestions putting active dopamine-antagonist orders on hold (rules in the module text)."""
    if a.indicator != "critical":
        return []
    record = {f"MedicationRequest/{r['id']}": r for r in gathered.data["medications"].resources
              if r.get("resourceType") == "MedicationRequest" and isinstance(r.get("id"), str)}
    out: list[models.Suggestion] = []
    seen: set[str] = set()
    for e in a.exposures:
        raw = record.get(e.ref or "")
        if (e.role != "antagonist" or e.is_draft or e.ref in seen or raw is None
                or raw.get("status") != "active" or not _subject_is(raw, patient_id)):
            continue
        seen.add(e.ref or "")
        held = {**raw, "status": "on-hold", "statusReason": {"text": HOLD_REASON}}
        out.append(models.Suggestion(
            label=f"Put the {plain(e.ingredient)} order on hold (reversible; pending bedside assessment)",
            uuid=card_uuid(seed, f"suggestion:hold:{e.ref}"),
            isRecommended=False,
            actions=[models.Action(type="update", description=f"Set {ref(e.ref)} ({plain(e.label)}) to on-hold",
                                   resource=models.FhirResource.model_validate(held))],
        ))
        if len(out) == MAX_HOLDS:
            break
    return out



class PatientViewPolicy(HookPolicy):
    hook = "patient-view"
    title = "NMS watch when a chart is opened (patients on antipsychotics or antiemetics)"
    description = (
        "When a patient's chart is opened, looks for the pattern of neuroleptic malignant syndrome in a "
        "patient already exposed to a dopamine antagonist (antipsychotics, D2-blocking antiemetics) or "
        "withdrawn from a dopaminergic drug: fever, creatine kinase rise, low serum iron, autonomic "
        "instability. Quiet unless there is a finding; shows its evidence and the structured IEC criteria."
    )
    usage_note = "No card unless a finding is present."

    def __init__(self, settings: Settings) -> None:
        self.id = settings.patient_view_service_id

    def exposure_drafts(self, req: HookRequest) -> list[dict[str, Any]]:
        return []  # the chart: only what the record holds

    def cards(self, assessment: Assessment, req: HookRequest, gathered: Gathered) -> list[dict[str, Any]]:
        if assessment.indicator not in ("critical", "warning"):
            return []
        seed = evidence_key(assessment, self.id, req.patient_id)
        holds = hold_suggestions(assessment, gathered, req.patient_id, seed)
        return build_cards(assessment, seed, req.patient_id, extra_suggestions=holds, style=gathered.style)
