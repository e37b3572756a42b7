"""Repeated cards: a card's uuid is derived from the evidence it shows.

A chart is opened many times a day and ``patient-view`` fires each time. The card uuid (and each suggestion
uuid) is a name-based uuid5 of the service id, the patient id, the indicator and the evidence the card shows:
the exposures (reference, ingredient, status), the readings behind each criterion and finding (reference,
code, time, value), the NMS history items, the reasons for the card, the alternative causes weighed and what
could not be retrieved. So:

- the first, second and third opening of the same chart with the same evidence give the *same* card:
  same uuid, same text, same indicator, never escalated, never duplicated (CDS clients replace the cards
  of the previous invocation of the same service), and an EHR can recognise the repeat;
- anything in the evidence that changes (another febrile reading, a new CK, a newer normal vital sign, the
  order put on hold) gives a new uuid;
- the store's card audit (keyed by card uuid) records a repeated card once, at its first showing; the uuid is
  a one-way hash, not patient data.

Whether a card is *shown* again after the clinician answered it (feedback accepted, or overridden with a
reason) is not decided here: the quiet period (:mod:`cds_service.services.quiet`, applied by the runtime
with what the store remembers) keys on something coarser than this uuid — a keyed hash of service and patient
plus the card's *decisive* facts — so that a merely newer reading, which changes the uuid, does not bring the
card back, while a worse verdict or a new decisive finding does.

The ``now`` of the call is not part of the key: only what the card shows is.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cds_service.clinical import Assessment


def _reading_keys(readings: Any) -> list[list[Any]]:
    return sorted([r.ref or "", r.code, r.time.isoformat(), round(r.value, 6)] for r in readings)


def evidence_key(a: Assessment, service_id: str, patient_id: str) -> str:
    """A stable text key for the evidence behind ``a``'s card (hex digest; contains no patient data)."""
    facts: dict[str, Any] = {
        "service": service_id,
        "patient": patient_id,
        "indicator": a.indicator,
        "exposures": sorted([e.ref or "", e.ingredient, e.role, e.status or "", e.is_draft] for e in a.exposures),
        "criteria": {c.name: [c.met, c.points, _reading_keys(c.evidence)] for c in a.criteria},
        "findings": {f.name: [f.present, _reading_keys(f.evidence)] for f in a.findings},
        "history": sorted([h.kind, h.ref or "", h.description] for h in a.history),
        "missing_labs": sorted(a.missing_labs),
        "missing": sorted(a.missing),
        "reasons": list(a.reasons),
        # alternative causes weighed by the clinical core, where it reports them
        "other_causes": sorted([str(getattr(c, "cause", c)), str(getattr(c, "found", ""))]
                               for c in getattr(a, "other_causes", ())),
    }
    text = json.dumps(facts, sort_keys=True, separators=(",", ":"), default=str)
    return "evidence:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
