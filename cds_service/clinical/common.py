"""Record statuses and small helpers shared by the rule modules (no rule lives here)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

USABLE_STATUSES = frozenset({"final", "amended", "corrected"})
EXCLUDED_ORDER_STATUSES = frozenset({"entered-in-error", "cancelled"})
ONGOING_ORDER_STATUSES = frozenset({"active", "on-hold"})
ENDED_ORDER_STATUSES = frozenset({"stopped", "completed"})
# Per kind of record: statuses that mean "never taken / not a record", and those that mean "ongoing".
EXCLUDED_STATUSES = {
    "request": EXCLUDED_ORDER_STATUSES,
    "administration": frozenset({"not-done", "entered-in-error"}),
    "statement": frozenset({"entered-in-error", "not-taken", "intended"}),
}
ONGOING_STATUSES = {
    "request": ONGOING_ORDER_STATUSES,
    "administration": frozenset({"in-progress", "on-hold"}),
    "statement": frozenset({"active", "on-hold"}),
}
ENDED_STATUSES = {
    "request": ENDED_ORDER_STATUSES,
    "administration": frozenset({"completed", "stopped"}),
    "statement": frozenset({"completed", "stopped"}),
}
# Future-dated values are clock errors, not observations. Small skew between systems is tolerated.
FUTURE_SKEW = timedelta(minutes=10)
EARLIEST = datetime.min.replace(tzinfo=UTC)


def when_text(dt: datetime | None) -> str:
    return dt.strftime("%Y-%m-%d %H:%M") + " UTC" if dt else "time unknown"
