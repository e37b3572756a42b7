"""The quiet period: a card the clinician has answered is not shown again until something decisive changes.

Pure policy, no store and no clock (the caller passes ``now`` and what the store remembers). Rules, in
docs/protocol.md "Repeated cards and the quiet period":

- A card is *answered* by feedback ``accepted``, or ``overridden`` with an override reason. For
  ``NMS_CDS_QUIET_PERIOD_HOURS`` after that feedback was received, ``patient-view`` and ``order-select`` do
  not show the same patient's card of the same service again, unless
  - the verdict worsens (:data:`INDICATOR_RANK`: info < warning < critical), or
  - a *decisive* finding is new (:func:`news`): an IEC criterion met that was not met, a supporting finding
    present that was not (serum iron, WBC, CRP, ...), a febrile reading (> the hyperthermia threshold) at a
    time not seen, a CK peak higher than the one answered, a dopamine antagonist or withdrawn dopaminergic
    drug not on the answered card, or a documented previous NMS not on it.
- ``order-sign`` is never quieted (a new antagonist draft always gets its card).

What is *not* decisive: a newer normal vital sign, a lower CK, an older reading leaving the window, a
changed order status. Those change the card's uuid (the full evidence key, :mod:`.repeat`) but not its
:class:`Decisive` facts, which is why suppression compares the decisive facts of the answered card with
today's (set inclusion), and is not keyed by the uuid.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cds_service.clinical import Assessment
from cds_service.clinical.valuesets import load

INDICATOR_RANK = {"info": 0, "warning": 1, "critical": 2}
QUIET_HOOKS = ("patient-view", "order-select")


@dataclass(frozen=True)
class Decisive:
    """The facts whose change makes a card new for the clinician (a coarse view of the evidence)."""

    indicator: str
    criteria: frozenset[str] = frozenset()  # IEC criteria met
    findings: frozenset[str] = frozenset()  # supporting findings present
    febrile: frozenset[str] = frozenset()  # times (ISO 8601) of readings above the hyperthermia threshold
    ck_peak: float | None = None  # U/L
    drugs: frozenset[str] = frozenset()  # ingredients of the dopamine-antagonist and withdrawal exposures
    history: bool = False  # a previous NMS documented

    def to_json(self) -> str:
        return json.dumps({"indicator": self.indicator, "criteria": sorted(self.criteria),
                           "findings": sorted(self.findings), "febrile": sorted(self.febrile),
                           "ck_peak": self.ck_peak, "drugs": sorted(self.drugs), "history": self.history},
                          sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Decisive:
        """ValueError (or KeyError/TypeError) on a malformed row; the caller treats it as no memory."""
        d: dict[str, Any] = json.loads(text)
        peak = d.get("ck_peak")
        return cls(indicator=str(d["indicator"]), criteria=frozenset(map(str, d.get("criteria", []))),
                   findings=frozenset(map(str, d.get("findings", []))),
                   febrile=frozenset(map(str, d.get("febrile", []))),
                   ck_peak=float(peak) if peak is not None else None, drugs=frozenset(map(str, d.get("drugs", []))),
                   history=bool(d.get("history", False)))

    @property
    def fingerprint(self) -> str:
        """A short hash of the decisive facts (audit and logs; no patient data)."""
        return "decisive:" + hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()[:32]


def _instant(t: datetime) -> str:
    """One spelling per instant (a reading given with another offset is the same reading)."""
    return (t.astimezone(UTC) if t.tzinfo is not None else t).isoformat()


def decisive(a: Assessment) -> Decisive | None:
    """The decisive facts of ``a``'s card; None when it has no indicator (no card)."""
    if a.indicator is None:
        return None
    threshold = float(load().thresholds["hyperthermia"]["threshold_cel"])
    hyper = next((c for c in a.criteria if c.name == "hyperthermia"), None)
    febrile = frozenset(_instant(r.time) for r in (hyper.evidence if hyper else []) if r.value > threshold)
    return Decisive(
        indicator=a.indicator,
        criteria=frozenset(c.name for c in a.criteria if c.met),
        findings=frozenset(f.name for f in a.findings if f.present),
        febrile=febrile,
        ck_peak=round(a.ck_peak.value, 3) if a.ck_peak is not None else None,
        drugs=frozenset(e.ingredient for e in a.exposures if e.role in ("antagonist", "withdrawal")),
        history=bool(a.history),
    )


def news(now: Decisive, then: Decisive) -> list[str]:
    """What makes ``now`` new against the answered ``then`` (empty: nothing decisive is new)."""
    out: list[str] = []
    if INDICATOR_RANK.get(now.indicator, 0) > INDICATOR_RANK.get(then.indicator, 0):
        out.append(f"verdict worsened ({then.indicator} -> {now.indicator})")
    out += [f"criterion newly met: {name}" for name in sorted(now.criteria - then.criteria)]
    out += [f"finding newly present: {name}" for name in sorted(now.findings - then.findings)]
    if now.febrile - then.febrile:
        out.append(f"{len(now.febrile - then.febrile)} new febrile reading(s)")
    if now.ck_peak is not None and (then.ck_peak is None or now.ck_peak > then.ck_peak):
        out.append("higher CK")
    if now.drugs - then.drugs:
        out.append("new drug exposure")
    if now.history and not then.history:
        out.append("previous NMS newly documented")
    return out


@dataclass(frozen=True)
class Answered:
    """A card of this patient and service that the clinician answered (from the store)."""

    card_uuid: str
    decisive: Decisive
    answered_at: float  # epoch seconds: when the feedback was received
    outcome: str  # "accepted" | "overridden"


@dataclass(frozen=True)
class Decision:
    suppress: bool
    reason: str  # why (for the audit and the log; no patient data)
    until: float | None = None  # end of the quiet period that applies (suppress only)
    answered: Answered | None = None


def decide(current: Decisive, answered: list[Answered], *, now: float, period_seconds: float) -> Decision:
    """Suppress ``current`` when a card answered within the period covers it (nothing decisive is new)."""
    if period_seconds <= 0:
        return Decision(False, "quiet period off")
    live = [a for a in answered if now - period_seconds <= a.answered_at <= now + 60]  # 60 s: clock skew
    if not live:
        return Decision(False, "no answered card in the quiet period")
    newest_reasons: list[str] = []
    for a in sorted(live, key=lambda a: a.answered_at, reverse=True):
        found = news(current, a.decisive)
        if not found:
            return Decision(True, f"same decisive evidence as card {a.card_uuid} ({a.outcome})",
                            until=a.answered_at + period_seconds, answered=a)
        newest_reasons = newest_reasons or found
    return Decision(False, "; ".join(newest_reasons))
