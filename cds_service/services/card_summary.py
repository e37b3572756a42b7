"""A card's kind and its one-line summary (≤ 139 characters, the CDS Hooks "<140"): verdict, drug, the
decisive findings.

The kinds have their own reviewed wording (docs/clinical-rules.md "Cards"): ``critical`` and ``warning`` name
"possible NMS" and the numbers that decided it; ``rechallenge`` (a documented previous NMS, a dopamine
antagonist drafted, no current finding) says so and claims nothing current; ``withdrawal`` (a dopaminergic
drug stopped, no dopamine antagonist) never calls the stopped drug an antagonist; ``incomplete`` names what
could not be read.
"""

from __future__ import annotations

import math
from typing import Literal

from cds_service.clinical.model import Assessment
from cds_service.clinical.valuesets import load
from cds_service.services.markup import plain

SUMMARY_LIMIT = 139  # "<140 characters"
RECHALLENGE_REASON = "draft dopamine antagonist after a previous NMS episode (re-challenge)"

CardKind = Literal["critical", "warning", "rechallenge", "withdrawal", "incomplete"]


def card_kind(a: Assessment) -> CardKind:
    """Which wording the card of ``a`` takes (``a.indicator`` is not None)."""
    if a.indicator == "info":
        return "incomplete"
    if a.indicator == "warning" and a.reasons == [RECHALLENGE_REASON]:
        return "rechallenge"
    if withdrawal_only(a):
        return "withdrawal"
    return "critical" if a.indicator == "critical" else "warning"


def withdrawal_only(a: Assessment) -> bool:
    """The card's exposures are dopaminergic withdrawals alone: no dopamine antagonist to name."""
    return bool(a.exposures) and all(e.role != "antagonist" for e in a.exposures)


def drug_names(a: Assessment) -> str:
    drafts = sorted({e.ingredient for e in a.exposures if e.is_draft and e.role == "antagonist"})
    others = sorted({e.ingredient for e in a.exposures if e.role in ("antagonist", "withdrawal")} - set(drafts))
    names = drafts + others
    withdrawal = {e.ingredient for e in a.exposures if e.role == "withdrawal"}
    return " + ".join(n + (" stopped" if n in withdrawal else "") for n in names[:2]) or "dopamine antagonist"


def uln_multiple(ratio: float) -> str:
    """A CK multiple as the card shows it: whole from 10, else one decimal rounded down (3.96 is never "4", 2.5
    stays 2.5)."""
    return f"{ratio:.0f}" if ratio >= 10 else f"{math.floor(ratio * 10 + 1e-9) / 10:.1f}".removesuffix(".0")


def summary(a: Assessment) -> str:
    hyper = a.criterion("hyperthermia")
    parts: list[str] = [drug_names(a)]
    febrile = [r for r in hyper.evidence if r.value > load().thresholds["hyperthermia"]["threshold_cel"]]
    if febrile:
        peak = max(r.value for r in febrile)
        parts.append(f"T {peak:.1f} °C" + (f" ×{len(febrile)}" if len(febrile) > 1 else ""))
    if a.ck_peak is not None and a.ck_uln and a.ck_peak.value > a.ck_uln:
        parts.append(f"CK {a.ck_peak.value:,.0f} U/L ({uln_multiple(a.ck_peak.value / a.ck_uln)}×ULN)")
    if a.ck_state is not None and a.indicator == "critical":
        parts.append("CK pending" if a.ck_state == "pending" else "CK not measured: order stat")
    iron = next((f for f in a.findings if f.name == "iron-low-or-falling" and f.present), None)
    if iron and iron.evidence:
        low = min(iron.evidence, key=lambda r: r.value)
        parts.append(f"iron {low.value:.1f} µmol/L")
    kind = card_kind(a)
    if kind == "incomplete":
        text = f"NMS check incomplete for {parts[0]}: could not retrieve " + plain(", ".join(a.missing), 100)
    elif kind == "rechallenge":
        text = f"Previous NMS documented: review before signing {parts[0]} (re-challenge)"
    else:
        prefix = "Possible NMS" if a.indicator == "critical" else "Possible early NMS pattern"
        text = f"{prefix}: " + " + ".join(parts)
        while len(text) > SUMMARY_LIMIT and len(parts) > 1:
            parts.pop()
            text = f"{prefix}: " + " + ".join(parts)
    return text if len(text) <= SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 1] + "…"
