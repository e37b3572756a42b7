"""Cards joined to what happened after them: firing rate, positive predictive value, time to action.

A card is counted once (its uuid; a repeated patient-view card with the same evidence has the same uuid),
only ``warning`` and ``critical`` cards, and only when its patient's record was found (the audit keeps the
patient as a keyed hash; the report hashes the record's patient ids with the store's key to match them).

- **PPV** (per indicator, rule, client and hook): cards followed by NMS coded within the horizon / cards
  whose record was read. It is the committee's number; coding lags and is incomplete, so it is a lower bound.
- **Acted on**: cards followed by any outcome (NMS coded, dantrolene or bromocriptine, the antagonist
  stopped, intensive care) / cards whose record was read; time to action is from the card to the first one.
- **Firing rate**: cards per 100 patient-days on a dopamine antagonist in the window (every record read).

Nothing that identifies a patient is in the result: counts, rates and hours only.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cds_service.outcomes import detect
from cds_service.outcomes.exposure_days import patient_days
from cds_service.outcomes.records import Records
from cds_service.store.base import CardRecord

ALERTING = ("critical", "warning")


@dataclass
class Tally:
    cards: int = 0
    with_record: int = 0
    nms_coded: int = 0
    acted_on: int = 0
    by_kind: dict[str, int] = field(default_factory=lambda: dict.fromkeys(detect.KINDS, 0))
    hours_to_action: list[float] = field(default_factory=list)

    def add(self, found: dict[str, datetime] | None, card_at: datetime) -> None:
        self.cards += 1
        if found is None:
            return
        self.with_record += 1
        self.nms_coded += "nms-coded" in found
        for kind in found:
            self.by_kind[kind] += 1
        if found:
            self.acted_on += 1
            self.hours_to_action.append((min(found.values()) - card_at).total_seconds() / 3600.0)

    def as_json(self) -> dict[str, Any]:
        hours = sorted(self.hours_to_action)
        return {
            "cards": self.cards, "cards_with_record": self.with_record,
            "ppv": {"numerator": self.nms_coded, "denominator": self.with_record,
                    "value": round(self.nms_coded / self.with_record, 4) if self.with_record else None},
            "acted_on": {"numerator": self.acted_on, "denominator": self.with_record,
                         "value": round(self.acted_on / self.with_record, 4) if self.with_record else None},
            "outcomes": dict(self.by_kind),
            "hours_to_first_action": {"median": round(statistics.median(hours), 2) if hours else None,
                                      "max": round(hours[-1], 2) if hours else None},
        }


@dataclass
class OutcomeReport:
    since: datetime
    until: datetime
    horizon: timedelta
    overall: Tally = field(default_factory=Tally)
    splits: dict[str, dict[str, Tally]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(Tally)))
    patient_days: float = 0.0
    patients_on_antagonists: int = 0
    cards_without_record: int = 0
    unreadable: dict[str, int] = field(default_factory=dict)
    truncated: list[str] = field(default_factory=list)

    def firing_rate(self) -> float | None:
        return 100.0 * self.overall.cards / self.patient_days if self.patient_days else None

    def as_json(self) -> dict[str, Any]:
        rate = self.firing_rate()
        return {
            "window": {"since": self.since.isoformat(), "until": self.until.isoformat(),
                       "horizon_hours": self.horizon.total_seconds() / 3600.0},
            "firing_rate_per_100_patient_days": round(rate, 3) if rate is not None else None,
            "patient_days_on_antagonists": round(self.patient_days, 2),
            "patients_on_antagonists": self.patients_on_antagonists,
            "cards_without_record": self.cards_without_record,
            "overall": self.overall.as_json(),
            **{f"by_{name}": {k: t.as_json() for k, t in sorted(groups.items())}
               for name, groups in sorted(self.splits.items())},
            "records_not_read": dict(sorted(self.unreadable.items())),
            "reading_capped_for": list(self.truncated),
        }


def build(cards: Iterable[CardRecord], records: Records, *, token_of: Callable[[str], str | None],
          since: float, until: float, horizon: timedelta) -> OutcomeReport:
    """``token_of`` turns a record's patient id into the audit's patient column (the keyed hash)."""
    start, end = datetime.fromtimestamp(since, UTC), datetime.fromtimestamp(until, UTC)
    report = OutcomeReport(since=start, until=end, horizon=horizon, unreadable=dict(records.unreadable),
                           truncated=list(records.truncated))
    by_token: dict[str, str] = {}
    for patient, record in records.by_patient.items():
        token = token_of(patient)
        if token is not None:
            by_token[token] = patient
        days = patient_days(record, records.medications, start, end)
        if days > 0:
            report.patient_days += days
            report.patients_on_antagonists += 1
    events_of: dict[str, list[detect.Event]] = {}
    seen: set[str] = set()
    for card in sorted(cards, key=lambda c: c.served_at):
        if card.indicator not in ALERTING or card.card_uuid in seen:
            continue
        seen.add(card.card_uuid)
        card_at = datetime.fromtimestamp(card.served_at, UTC)
        matched = by_token.get(card.patient or "")
        found: dict[str, datetime] | None = None
        if matched is None:
            report.cards_without_record += 1
        else:
            if matched not in events_of:
                events_of[matched] = detect.events(records.by_patient[matched], records.medications)
            found = detect.after(events_of[matched], card_at, horizon)
        report.overall.add(found, card_at)
        report.splits["indicator"][card.indicator].add(found, card_at)
        report.splits["hook"][card.hook].add(found, card_at)
        report.splits["client"][card.client_iss or "(no client: authentication off)"].add(found, card_at)
        for rule in card.rules:
            report.splits["rule"][rule].add(found, card_at)
    return report


def _pct(t: Tally, part: int) -> str:
    return f"{part}/{t.with_record} ({100 * part / t.with_record:.0f} %)" if t.with_record else "–"


def render_text(r: OutcomeReport, clean: Callable[[str], str] = str) -> str:
    rate = r.firing_rate()
    lines = [f"nms-cds outcome report, cards {r.since:%Y-%m-%d %H:%M} to {r.until:%Y-%m-%d %H:%M} UTC, "
             f"outcomes within {r.horizon.total_seconds() / 3600:.0f} h of each card", ""]
    lines.append(f"Warning and critical cards: {r.overall.cards}; record found for {r.overall.with_record} "
                 f"(not found: {r.cards_without_record})")
    lines.append(f"Patients on a dopamine antagonist: {r.patients_on_antagonists}; patient-days "
                 f"{r.patient_days:.1f}; cards per 100 patient-days: "
                 + (f"{rate:.2f}" if rate is not None else "– (no exposure found in the records read)"))
    header = f"{'':<34}{'cards':>6}{'PPV (NMS coded)':>18}{'acted on':>16}{'median h':>10}"
    for name in ("indicator", "rule", "client", "hook"):
        groups = r.splits.get(name, {})
        lines += ["", f"By {name}", header]
        for key, t in sorted(groups.items(), key=lambda kv: (-kv[1].cards, kv[0])):
            hours = statistics.median(t.hours_to_action) if t.hours_to_action else None
            lines.append(f"{clean(key)[:33]:<34}{t.cards:>6}{_pct(t, t.nms_coded):>18}{_pct(t, t.acted_on):>16}"
                         + (f"{hours:>10.1f}" if hours is not None else f"{'–':>10}"))
    o = r.overall
    lines += ["", "Outcomes after the cards (first of each kind per card): "
              + ", ".join(f"{k} {v}" for k, v in o.by_kind.items())]
    if r.unreadable:
        lines.append("Records not read: " + ", ".join(f"{clean(k)} {v}" for k, v in sorted(r.unreadable.items())))
    if r.truncated:
        lines.append("Reading stopped at the page cap for: " + ", ".join(r.truncated)
                     + " (the rates are computed on what was read)")
    return "\n".join(lines) + "\n"
