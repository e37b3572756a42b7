"""What the SQLite and PostgreSQL stores share: every query, written once in the SQL both understand.

Placeholders are written ``?`` and turned into ``%s`` for psycopg. Both dialects have
``INSERT … ON CONFLICT … DO NOTHING`` (SQLite ≥ 3.24), which is the atomic insert-if-absent that
decides "new" for feedback and replay entries inside the transaction that stores them.
"""

from __future__ import annotations

import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from cds_service.errors import QuotaExceeded
from cds_service.store.base import (
    AnsweredRow,
    CardRecord,
    FeedbackRecord,
    ReplayVerdict,
    ReportRows,
    SuppressedRecord,
    clip,
    clip_list,
)
from cds_service.store.migrations import CREATE_TRACKING, MIGRATIONS

T = TypeVar("T")
MAX_DECISIVE = 65536  # a decisive-facts JSON longer than this is cut, then read as no memory (fail open)


class Cursor:
    """A DB-API cursor that takes ``?`` placeholders in either dialect."""

    def __init__(self, cursor: Any, dialect: str) -> None:
        self.cursor = cursor
        self.dialect = dialect

    def x(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.dialect == "postgres":
            sql = sql.replace("?", "%s")
        self.cursor.execute(sql, tuple(params))
        return self.cursor


def _dumps(values: Sequence[str]) -> str:
    return json.dumps(list(values), ensure_ascii=False, separators=(",", ":"))


def _loads(text: str | None) -> tuple[str, ...]:
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return ()
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


class SqlStore(ABC):
    backend: str
    for_update: str = ""  # " FOR UPDATE" where the dialect has row locks

    def __init__(self, *, max_per_issuer: int, feedback_per_hour: int = 0, feedback_total: int = 0) -> None:
        self.max_per_issuer = max_per_issuer
        self.feedback_per_hour = feedback_per_hour  # rows per client per hour (0: no limit)
        self.feedback_total = feedback_total  # rows per client kept (0: no limit)

    @abstractmethod
    def _run(self, fn: Callable[[Cursor], T], *, durable: bool = False, lock: bool = False,
             read_only: bool = False) -> T:
        """Run ``fn`` in one transaction (committed before returning); StoreUnavailable on any failure.
        ``read_only``: ``fn`` only reads (SQLite then does not queue for the write lock)."""

    # -- schema --------------------------------------------------------------------------------------
    def _migrate(self, cur: Cursor) -> list[int]:
        """Apply pending migrations; the caller holds the database's migration lock."""
        cur.x(CREATE_TRACKING.format(real="DOUBLE PRECISION" if self.backend == "postgres" else "REAL"))
        done = {row[0] for row in cur.x("SELECT version FROM schema_migrations").fetchall()}
        applied = []
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            for statement in migration.sql(self.backend):
                cur.x(statement)
            cur.x("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                  (migration.version, migration.name, time.time()))
            applied.append(migration.version)
        return applied

    def schema_version(self) -> int:
        def fn(cur: Cursor) -> int:
            row = cur.x("SELECT max(version) FROM schema_migrations").fetchone()
            return int(row[0] or 0)

        return self._run(fn)

    # -- interface -----------------------------------------------------------------------------------
    def ping(self) -> None:
        self._run(lambda cur: cur.x("SELECT 1").fetchone())

    def legacy_hash_key(self) -> str | None:
        """The patient-hash key (hex) that earlier versions kept in the database, if it is still there."""
        row = self._run(lambda cur: cur.x("SELECT value FROM store_meta WHERE name = 'patient_hash_key'").fetchone())
        return None if row is None else str(row[0])

    def drop_legacy_hash_key(self) -> None:
        self._run(lambda cur: cur.x("DELETE FROM store_meta WHERE name = 'patient_hash_key'"), durable=True)

    def record_cards(self, cards: Sequence[CardRecord]) -> None:
        def fn(cur: Cursor) -> None:
            for c in cards:
                cur.x(
                    "INSERT INTO card_audit (card_uuid, served_at, hook, service_id, hook_instance, indicator, "
                    "score, rules, reasons, evidence, client_iss, patient, quiet_key, decisive, mode, card, "
                    "knowledge_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    # a card audited before the quiet period existed gets its memory at its next showing
                    "ON CONFLICT (card_uuid) DO UPDATE SET quiet_key = excluded.quiet_key, "
                    "decisive = excluded.decisive "
                    "WHERE card_audit.quiet_key IS NULL AND excluded.quiet_key IS NOT NULL",
                    (clip(c.card_uuid), c.served_at, clip(c.hook), clip(c.service_id), clip(c.hook_instance),
                     clip(c.indicator), c.score, _dumps(clip_list(c.rules)), _dumps(clip_list(c.reasons, 512)),
                     _dumps(clip_list(c.evidence)), clip(c.client_iss), clip(c.patient), clip(c.quiet_key),
                     clip(c.decisive, MAX_DECISIVE), clip(c.mode), c.card, clip(c.knowledge_version)))

        if cards:
            self._run(fn)

    def add_feedback(self, items: Sequence[FeedbackRecord]) -> int:
        def fn(cur: Cursor) -> int:
            new = 0
            for f in items:
                result = cur.x(
                    "INSERT INTO feedback (service_id, card_uuid, outcome, outcome_timestamp, received_at, "
                    "accepted_suggestions, override_code, override_system, client_iss) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (service_id, card_uuid, outcome, outcome_timestamp) DO NOTHING",
                    (clip(f.service_id), clip(f.card_uuid), clip(f.outcome), clip(f.outcome_timestamp),
                     f.received_at, _dumps(clip_list(f.accepted_suggestions)), clip(f.override_code),
                     clip(f.override_system), clip(f.client_iss)))
                new += max(result.rowcount, 0)
            if items and new:
                self._count_feedback(cur, items[0].client_iss, new, items[0].received_at)
            return new

        return self._run(fn, durable=True)

    def answered(self, quiet_key: str, since: float) -> list[AnsweredRow]:
        def fn(cur: Cursor) -> list[AnsweredRow]:
            rows = cur.x(
                "SELECT c.card_uuid, c.decisive, max(f.received_at), "
                "max(CASE WHEN f.outcome = 'overridden' THEN 'overridden' ELSE 'accepted' END) "
                # only feedback from the client the card was shown to (or both without one: auth off)
                "FROM card_audit c JOIN feedback f ON f.card_uuid = c.card_uuid AND f.service_id = c.service_id "
                "AND (f.client_iss = c.client_iss OR (f.client_iss IS NULL AND c.client_iss IS NULL)) "
                "WHERE c.quiet_key = ? AND c.decisive IS NOT NULL AND f.received_at >= ? "
                "AND (f.outcome = 'accepted' OR (f.outcome = 'overridden' AND f.override_code IS NOT NULL)) "
                "GROUP BY c.card_uuid, c.decisive", (clip(quiet_key), since)).fetchall()
            return [AnsweredRow(r[0], r[1], float(r[2]), r[3]) for r in rows]

        return self._run(fn, read_only=True)  # on the hook's path: never waits behind a writer

    def record_suppressed(self, items: Sequence[SuppressedRecord]) -> None:
        def fn(cur: Cursor) -> None:
            for s in items:
                cur.x("INSERT INTO card_suppressed (suppressed_at, hook, service_id, hook_instance, card_uuid, "
                      "indicator, answered_card_uuid, reason, until, client_iss) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (s.suppressed_at, clip(s.hook), clip(s.service_id), clip(s.hook_instance), clip(s.card_uuid),
                       clip(s.indicator), clip(s.answered_card_uuid), clip(s.reason, 512), s.until,
                       clip(s.client_iss)))

        if items:
            self._run(fn)

    def _count_feedback(self, cur: Cursor, iss: str | None, new: int, now: float) -> None:
        """Add ``new`` rows to the client's total; QuotaExceeded (the transaction rolls back) beyond a quota."""
        client = iss or ""
        cur.x("INSERT INTO feedback_client (client, total) VALUES (?, 0) ON CONFLICT (client) DO NOTHING", (client,))
        row = cur.x(f"SELECT total FROM feedback_client WHERE client = ?{self.for_update}", (client,)).fetchone()
        total = int(row[0]) + new
        cur.x("UPDATE feedback_client SET total = ? WHERE client = ?", (total, client))
        if self.feedback_total and total > self.feedback_total:
            raise QuotaExceeded(f"this client's feedback quota of {self.feedback_total} stored rows is used up; "
                                "rows are freed as they pass the retention period", retry_after=3600)
        if self.feedback_per_hour:
            who = "client_iss = ?" if iss is not None else "client_iss IS NULL"
            params: tuple[Any, ...] = (iss, now - 3600.0) if iss is not None else (now - 3600.0,)
            row = cur.x(f"SELECT count(*), min(received_at) FROM feedback WHERE {who} AND received_at > ?",
                        params).fetchone()
            if int(row[0]) > self.feedback_per_hour:
                wait = max(1, math.ceil(float(row[1]) + 3600.0 - now))
                raise QuotaExceeded(f"this client's feedback quota of {self.feedback_per_hour} rows per hour is "
                                    "used up", retry_after=wait)

    def claim(self, iss: str, jti: str, until: float, now: float) -> ReplayVerdict | None:
        def fn(cur: Cursor) -> ReplayVerdict | None:
            entries = self._lock_issuer(cur, iss, now)
            verdict: ReplayVerdict | None = None
            if cur.x("SELECT 1 FROM replay_jti WHERE iss = ? AND jti = ?", (iss, jti)).fetchone():
                verdict = "replay"
            elif entries >= self.max_per_issuer:
                verdict = "full"
            else:
                cur.x("INSERT INTO replay_jti (iss, jti, expires_at) VALUES (?, ?, ?)", (iss, jti, until))
                entries += 1
            cur.x("UPDATE replay_issuer SET entries = ? WHERE iss = ?", (entries, iss))
            return verdict

        return self._run(fn, lock=True)

    def _lock_issuer(self, cur: Cursor, iss: str, now: float) -> int:
        """Lock the issuer's counter row, drop its expired entries; return how many it still has."""
        cur.x("INSERT INTO replay_issuer (iss, entries) VALUES (?, 0) ON CONFLICT (iss) DO NOTHING", (iss,))
        row = cur.x(f"SELECT entries FROM replay_issuer WHERE iss = ?{self.for_update}", (iss,)).fetchone()
        purged = cur.x("DELETE FROM replay_jti WHERE iss = ? AND expires_at < ?", (iss, now)).rowcount
        remaining: int = max(int(row[0]) - max(int(purged), 0), 0)
        return remaining

    def replay_entries(self, iss: str) -> int:
        row = self._run(lambda cur: cur.x("SELECT count(*) FROM replay_jti WHERE iss = ?", (iss,)).fetchone())
        return int(row[0])

    def purge(self, *, before: float, now: float) -> dict[str, int]:
        def old(cur: Cursor) -> dict[str, int]:
            gone = cur.x("SELECT coalesce(client_iss, ''), count(*) FROM feedback WHERE received_at < ? "
                         "GROUP BY coalesce(client_iss, '')", (before,)).fetchall()
            for client, count in gone:
                cur.x("UPDATE feedback_client SET total = CASE WHEN total > ? THEN total - ? ELSE 0 END "
                      "WHERE client = ?", (int(count), int(count), client))
            cards = cur.x("DELETE FROM card_audit WHERE served_at < ?", (before,)).rowcount
            feedback = cur.x("DELETE FROM feedback WHERE received_at < ?", (before,)).rowcount
            suppressed = cur.x("DELETE FROM card_suppressed WHERE suppressed_at < ?", (before,)).rowcount
            return {"cards": max(cards, 0), "feedback": max(feedback, 0), "suppressed": max(suppressed, 0)}

        counts = self._run(old)
        issuers = [r[0] for r in self._run(lambda cur: cur.x("SELECT iss FROM replay_issuer").fetchall())]
        replay = 0
        for iss in issuers:
            def one(cur: Cursor, iss: str = iss) -> int:
                row = cur.x(f"SELECT entries FROM replay_issuer WHERE iss = ?{self.for_update}", (iss,)).fetchone()
                purged: int = max(int(cur.x("DELETE FROM replay_jti WHERE iss = ? AND expires_at < ?",
                                            (iss, now)).rowcount), 0)
                cur.x("UPDATE replay_issuer SET entries = ? WHERE iss = ?", (max(int(row[0]) - purged, 0), iss))
                return purged

            replay += self._run(one, lock=True)
        counts["replay"] = replay
        return counts

    def report_rows(self, since: float) -> ReportRows:
        def fn(cur: Cursor) -> ReportRows:
            rows = ReportRows()
            for r in cur.x("SELECT card_uuid, served_at, hook, service_id, hook_instance, indicator, score, rules, "
                           "reasons, evidence, client_iss, patient, quiet_key, decisive, mode, card, "
                           "knowledge_version FROM card_audit WHERE served_at >= ? ORDER BY served_at",
                           (since,)).fetchall():
                rows.cards.append(CardRecord(r[0], float(r[1]), r[2], r[3], r[4], r[5], r[6], _loads(r[7]),
                                             _loads(r[8]), _loads(r[9]), r[10], r[11], r[12], r[13], r[14], r[15],
                                             r[16]))
            for r in cur.x("SELECT service_id, card_uuid, outcome, outcome_timestamp, received_at, "
                           "accepted_suggestions, override_code, override_system, client_iss FROM feedback "
                           "WHERE received_at >= ? ORDER BY id", (since,)).fetchall():
                rows.feedback.append(FeedbackRecord(r[0], r[1], r[2], r[3], float(r[4]), _loads(r[5]), r[6], r[7],
                                                    r[8]))
            for r in cur.x("SELECT suppressed_at, hook, service_id, hook_instance, card_uuid, indicator, "
                           "answered_card_uuid, reason, until, client_iss FROM card_suppressed "
                           "WHERE suppressed_at >= ? ORDER BY id", (since,)).fetchall():
                rows.suppressed.append(SuppressedRecord(float(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7],
                                                        float(r[8]), r[9]))
            return rows

        return self._run(fn)
