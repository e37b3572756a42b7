"""The ``order-sign`` policy: the draft orders being signed are the new exposure; today's card policy."""

from __future__ import annotations

from typing import Any

from cds_service.clinical import Assessment
from cds_service.config import Settings
from cds_service.protocol.parse import HookRequest
from cds_service.services.cards import build_cards
from cds_service.services.engine import CallReport, Gathered, HookPolicy

__all__ = ["CallReport", "OrderSignPolicy"]


class OrderSignPolicy(HookPolicy):
    hook = "order-sign"
    title = "NMS check when orders are signed (antipsychotics, antiemetics)"
    description = (
        "At order signing, looks for dopamine-antagonist exposure (antipsychotics, D2-blocking "
        "antiemetics) or dopaminergic withdrawal together with the pattern of neuroleptic malignant "
        "syndrome: fever, creatine kinase rise, falling serum iron, autonomic instability and the "
        "acute-phase response. Scores the structured IEC consensus criteria and shows its evidence."
    )

    def __init__(self, settings: Settings) -> None:
        self.id = settings.service_id

    def exposure_drafts(self, req: HookRequest) -> list[dict[str, Any]]:
        return req.draft_resources()  # every order being signed

    def cards(self, assessment: Assessment, req: HookRequest, gathered: Gathered) -> list[dict[str, Any]]:
        return build_cards(assessment, req.hook_instance, req.patient_id, style=gathered.style)
