"""Patient-days on a dopamine antagonist: the denominator of the firing rate.

An order counts from ``authoredOn`` to the end of its validity or dosage bounds (a still active order to the
end of the window), a statement over its ``effectivePeriod`` (open-ended when active), an administration for
the calendar day of the dose. Overlapping spans of one patient count once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from cds_service.fhir.plain_types import plain_datetime as when
from cds_service.outcomes.detect import drug_roles, effective_start, medication_concept, request_end

_IGNORED = {"entered-in-error", "cancelled", "draft", "not-taken", "unknown"}


def _span(r: Mapping[str, Any], meds: Mapping[str, Any], until: datetime) -> tuple[datetime, datetime] | None:
    kind, status = r.get("resourceType"), str(r.get("status") or "").strip().lower()
    if status in _IGNORED or "antagonist" not in drug_roles(medication_concept(r, meds)):
        return None
    if kind == "MedicationRequest":
        start = when(r.get("authoredOn"))
        end = until if status in ("active", "on-hold") else request_end(r)
    elif kind == "MedicationStatement":
        period: Mapping[str, Any] = r["effectivePeriod"] if isinstance(r.get("effectivePeriod"), Mapping) else {}
        start = when(period.get("start")) or when(r.get("effectiveDateTime"))
        end = when(period.get("end")) or (until if status in ("active", "intended") else start)
    elif kind == "MedicationAdministration":
        start = effective_start(r)
        if start is None:
            return None
        start = start.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
    else:
        return None
    if start is None:
        return None
    return start, max(end or start, start)


def patient_days(record: Iterable[Mapping[str, Any]], meds: Mapping[str, Any], since: datetime,
                 until: datetime) -> float:
    """Days in ``[since, until]`` covered by any antagonist exposure of one patient's record."""
    spans = sorted(s for r in record if (s := _span(r, meds, until)) is not None)
    total = timedelta(0)
    current: tuple[datetime, datetime] | None = None
    for start, end in spans:
        start, end = max(start, since), min(end, until)
        if end <= start:
            continue
        if current is not None and start <= current[1]:
            current = (current[0], max(current[1], end))
            continue
        if current is not None:
            total += current[1] - current[0]
        current = (start, end)
    if current is not None:
        total += current[1] - current[0]
    return total.total_seconds() / 86400.0
