"""The indicator policy (docs/clinical-rules.md): which card the findings of one assessment give.

Pure: it reads the criteria already judged and returns the indicator and the reasons shown on the card.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cds_service.clinical.model import Criterion, Indicator, OtherCause


@dataclass(frozen=True)
class Facts:
    """What the policy weighs, from one assessment."""

    explaining: bool  # an exposure in effect before onset (or, without an episode, the record's exposures)
    antagonist_explaining: bool  # ... and it is a dopamine antagonist (not only a withdrawal)
    draft_antagonist: bool
    hyper: Criterion
    ck: Criterion
    autonomic: Criterion
    hypermet: Criterion
    febrile: int  # febrile readings in the acute window
    iron_nms: bool
    lab_change: bool  # CK above ULN, low or falling iron, leukocytosis, raised CRP
    im_artefact: bool
    history: bool  # a previous NMS on record
    extreme: str | None  # extreme hyperthermia, in words ("2 readings >= 40.0 °C"), or None
    ck_state: str | None  # "pending" or "missing" when no CK is counted in the episode
    other_found: list[OtherCause] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def _critical(f: Facts) -> str | None:
    """The reason for a critical card, or None."""
    if f.hyper.met and f.ck.met:
        return "exposure before onset + hyperthermia + CK ≥ 4×ULN"
    if f.hyper.met and f.iron_nms and not f.other_found:
        return "exposure before onset + hyperthermia + serum iron in NMS range"
    if f.extreme and f.ck_state and (f.autonomic.met or f.hypermet.met):
        signs = " and ".join(n for n, c in (("autonomic lability", f.autonomic), ("hypermetabolism", f.hypermet))
                             if c.met)
        lab = "CK result pending" if f.ck_state == "pending" else "no CK measured in this episode"
        return f"exposure before onset + extreme hyperthermia ({f.extreme}) + {signs}; {lab}: order CK stat"
    if f.history and f.antagonist_explaining and f.hyper.met and not f.other_found and (
            f.lab_change or f.autonomic.met or f.hypermet.met):
        return ("new febrile episode on a dopamine antagonist after a previous NMS episode (recurrence), with "
                + ", ".join(n for n, ok in (("laboratory changes", f.lab_change),
                                            ("autonomic lability", bool(f.autonomic.met)),
                                            ("hypermetabolism", bool(f.hypermet.met))) if ok))
    return None


def _partial(f: Facts) -> list[str]:
    reasons: list[str] = []
    if f.hyper.met and f.iron_nms:
        reasons.append("exposure before onset + hyperthermia + serum iron in NMS range, with another cause "
                       "found in the record (" + ", ".join(c.label.lower() for c in f.other_found)
                       + ") and CK below 4×ULN")
    elif f.hyper.met:
        reasons.append("exposure + hyperthermia on ≥ 2 occasions")
    if f.ck.met:
        reasons.append("exposure + CK ≥ 4×ULN" + (" (possibly from IM injection, afebrile)" if f.im_artefact else ""))
    if f.febrile == 1 and f.lab_change:
        reasons.append("exposure + one febrile reading with laboratory changes")
    if f.autonomic.met and f.hypermet.met:
        reasons.append("exposure + autonomic lability + hypermetabolism")
    if f.draft_antagonist and f.history:
        reasons.append("draft dopamine antagonist after a previous NMS episode (re-challenge)")
    return reasons


def decide(f: Facts) -> tuple[Indicator | None, list[str]]:
    """critical: the full pattern; warning: a partial one, or a draft after a previous NMS; info: a draft
    dopamine antagonist whose check is incomplete; None: nothing to say (alert fatigue is a safety problem)."""
    incomplete = "draft dopamine antagonist; NMS check incomplete: " + ", ".join(f.missing)
    if f.explaining:
        critical = _critical(f)
        if critical:
            return "critical", [critical]
        reasons = _partial(f)
        if reasons:
            return "warning", reasons
        if f.missing and f.draft_antagonist:
            return "info", [incomplete]
        return None, []
    if f.draft_antagonist:
        # Only the draft: it cannot explain findings already there (docs/clinical-rules.md: no card for an
        # abnormal baseline), but a previous NMS episode or an incomplete check is still worth saying.
        if f.history:
            return "warning", ["draft dopamine antagonist after a previous NMS episode (re-challenge)"]
        if f.missing:
            return "info", [incomplete]
    return None, []
