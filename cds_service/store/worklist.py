"""The surveillance tables of the SQL stores: patient leases shared by ``nms-cds watch`` replicas, and the
worklist.

- A **lease** (``watch_lease``) is taken with one atomic upsert that succeeds only when the patient is free or
  its lease has run out, so two replicas never evaluate one patient at the same time and a dead replica's
  patients are taken over once its leases expire. It works the same in SQLite and PostgreSQL (no advisory
  locks needed: the row is the lock).
- A **worklist entry** is unique per patient and finding (``finding_key``: indicator and episode onset); the
  insert is ``ON CONFLICT DO NOTHING``, so the same finding reaches the worklist exactly once whichever
  replica finds it, and a worsening (a new indicator) is a new entry.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cds_service.store.base import clip, clip_list
from cds_service.store.sql import Cursor, SqlStore

STATES = ("new", "seen", "resolved", "dismissed")


@dataclass(frozen=True)
class Entry:
    id: int
    patient_ref: str
    finding_key: str
    indicator: str
    summary: str
    card_uuid: str
    evidence: tuple[str, ...]
    criteria_met_at: float | None
    created_at: float
    state: str
    state_reason: str | None
    delivered_at: float | None


_COLUMNS = ("id, patient_ref, finding_key, indicator, summary, card_uuid, evidence, criteria_met_at, created_at, "
            "state, state_reason, delivered_at")


def _entry(row: Sequence[Any]) -> Entry:
    evidence = json.loads(row[6] or "[]")
    return Entry(int(row[0]), row[1], row[2], row[3], row[4], row[5], tuple(str(e) for e in evidence),
                 None if row[7] is None else float(row[7]), float(row[8]), row[9], row[10],
                 None if row[11] is None else float(row[11]))


class Worklist:
    """The worklist and lease operations on an open SQL store (SQLite or PostgreSQL)."""

    def __init__(self, store: Any) -> None:
        if not isinstance(store, SqlStore):
            raise TypeError("the worklist needs the SQLite or PostgreSQL store")
        self.store = store

    def lease(self, patient: str, owner: str, *, until: float, now: float, renew: bool = False) -> bool:
        """Take the lease of ``patient`` until ``until`` when nobody holds it (also not ``owner`` itself: a
        patient held after its evaluation waits for the next interval); ``renew``: extend ``owner``'s own lease.
        False when the lease is not taken."""
        condition = "watch_lease.owner = excluded.owner" if renew else "watch_lease.until < ?"
        params = (clip(patient), clip(owner), until) + (() if renew else (now,))

        def fn(cur: Cursor) -> bool:
            result = cur.x(
                "INSERT INTO watch_lease (patient, owner, until) VALUES (?, ?, ?) ON CONFLICT (patient) DO UPDATE "
                f"SET owner = excluded.owner, until = excluded.until WHERE {condition}", params)
            return bool(result.rowcount == 1)

        return self.store._run(fn, lock=True)

    def add(self, *, patient: str, patient_ref: str, finding_key: str, indicator: str, summary: str,
            card_uuid: str, evidence: Sequence[str], criteria_met_at: float | None, now: float) -> int | None:
        """Insert a new entry; its id, or None when this finding is already on the worklist."""
        def fn(cur: Cursor) -> int | None:
            result = cur.x(
                "INSERT INTO worklist (patient, patient_ref, finding_key, indicator, summary, card_uuid, evidence, "
                "criteria_met_at, created_at, state, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'new', ?) "
                "ON CONFLICT (patient, finding_key) DO NOTHING",
                (clip(patient), clip(patient_ref), clip(finding_key), clip(indicator), (summary or "")[:300],
                 clip(card_uuid), json.dumps(clip_list(evidence)), criteria_met_at, now, now))
            if result.rowcount != 1:
                return None
            row = cur.x("SELECT id FROM worklist WHERE patient = ? AND finding_key = ?",
                        (clip(patient), clip(finding_key))).fetchone()
            return int(row[0])

        return self.store._run(fn, durable=True)

    def open_at_least(self, patient: str, rank_of: dict[str, int], rank: int, onset_key: str) -> bool:
        """Whether an open entry (new or seen) of this patient and episode is as severe as ``rank`` already."""
        def fn(cur: Cursor) -> list[Any]:
            return list(cur.x("SELECT indicator, finding_key FROM worklist WHERE patient = ? AND state IN "
                              "('new', 'seen')", (clip(patient),)).fetchall())

        return any(rank_of.get(ind, 0) >= rank and key.endswith(onset_key) for ind, key in self.store._run(fn))

    def entries(self, states: Sequence[str] = ("new", "seen")) -> list[Entry]:
        marks = ", ".join("?" for _ in states)
        return [_entry(r) for r in self.store._run(lambda cur: cur.x(
            f"SELECT {_COLUMNS} FROM worklist WHERE state IN ({marks}) ORDER BY created_at, id",
            tuple(states)).fetchall())]

    def set_state(self, entry_id: int, state: str, reason: str | None, *, now: float) -> bool:
        if state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}")
        if state == "dismissed" and not (reason or "").strip():
            raise ValueError("a dismissal needs a reason")
        def fn(cur: Cursor) -> bool:
            result = cur.x("UPDATE worklist SET state = ?, state_reason = ?, updated_at = ? WHERE id = ?",
                           (state, (reason or None) and reason[:300], now, entry_id))
            return bool(result.rowcount == 1)

        return self.store._run(fn, durable=True)

    def undelivered(self, limit: int = 100) -> list[Entry]:
        return [_entry(r) for r in self.store._run(lambda cur: cur.x(
            f"SELECT {_COLUMNS} FROM worklist WHERE delivered_at IS NULL ORDER BY id LIMIT ?", (limit,)).fetchall())]

    def mark_delivered(self, entry_id: int, *, now: float) -> None:
        self.store._run(lambda cur: cur.x("UPDATE worklist SET delivered_at = ? WHERE id = ? AND delivered_at IS "
                                          "NULL", (now, entry_id)), durable=True)
