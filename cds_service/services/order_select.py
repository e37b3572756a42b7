"""The ``order-select`` policy: a drug has been picked, not yet signed.

Only the draft orders named in ``context.selections`` are the new exposure ("decision support should focus
on the selected orders"); the other unsigned drafts of ``draftOrders`` are not evidence of anything. When
no selected order is a dopamine antagonist the answer is no card, whatever the chart shows (the
``patient-view`` service covers the chart). When one is, the same evidence card as at signing appears
early — for a current NMS pattern, a previous NMS, or a finding that makes the drug risky — with the
same suggestions (remove the selected draft, order the missing labs). The ``info`` "check incomplete"
card is kept for signing: the sandbox and EHRs fire ``order-select`` at every change of the order form.

Card uuids come from the evidence and the selection (:mod:`cds_service.services.repeat`), so repeated
``order-select`` calls for the same pick show the same card; once answered, it stays quiet for the quiet
period (:mod:`cds_service.services.quiet`).
"""

from __future__ import annotations

from typing import Any

from cds_service.clinical import Assessment
from cds_service.config import Settings
from cds_service.protocol.parse import HookRequest
from cds_service.services.cards import build_cards
from cds_service.services.engine import Gathered, HookPolicy
from cds_service.services.repeat import evidence_key


def selected_drafts(req: HookRequest) -> list[dict[str, Any]]:
    """The drafts whose ``Type/id`` is one of ``context.selections``."""
    wanted = set(req.selections)
    return [r for r in req.draft_resources()
            if isinstance(r.get("resourceType"), str) and isinstance(r.get("id"), str)
            and f"{r['resourceType']}/{r['id']}" in wanted]


class OrderSelectPolicy(HookPolicy):
    hook = "order-select"
    title = "NMS check when a drug is picked (before signing)"
    description = (
        "When a dopamine antagonist (antipsychotic, D2-blocking antiemetic) is selected in the order form, "
        "warns before signing if the patient shows the pattern of neuroleptic malignant syndrome, had NMS "
        "before, or has a finding that makes the drug risky; shows the evidence and the structured IEC "
        "criteria. Selections that are not dopamine antagonists give no card."
    )
    usage_note = "Only the orders in context.selections are assessed as new."

    def __init__(self, settings: Settings) -> None:
        self.id = settings.order_select_service_id

    def exposure_drafts(self, req: HookRequest) -> list[dict[str, Any]]:
        return selected_drafts(req)

    def cards(self, assessment: Assessment, req: HookRequest, gathered: Gathered) -> list[dict[str, Any]]:
        if not assessment.draft_exposures or assessment.indicator not in ("critical", "warning"):
            return []
        seed = evidence_key(assessment, self.id, req.patient_id)
        return build_cards(assessment, seed, req.patient_id, style=gathered.style)
