"""Schema migrations: numbered, plain SQL, one list for both dialects, applied once under a lock.

Each migration is a list of statements with two dialect placeholders, ``{real}`` (a float column) and
``{serial}`` (an auto-increment primary key). ``schema_migrations`` records what was applied. The
runner takes the database's write lock first (SQLite ``BEGIN IMMEDIATE``; PostgreSQL
``pg_advisory_xact_lock``), so several workers or replicas starting together apply each step exactly
once, and a step either applies whole or not at all (DDL is transactional in both).

Never edit a released migration: append a new one.
"""

from __future__ import annotations

from dataclasses import dataclass

DIALECT = {
    "sqlite": {"real": "REAL", "serial": "INTEGER PRIMARY KEY AUTOINCREMENT"},
    "postgres": {"real": "DOUBLE PRECISION", "serial": "BIGSERIAL PRIMARY KEY"},
}


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]

    def sql(self, dialect: str) -> list[str]:
        return [s.format(**DIALECT[dialect]) for s in self.statements]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "card audit, feedback, replay cache", (
        """CREATE TABLE card_audit (
            card_uuid TEXT PRIMARY KEY,
            served_at {real} NOT NULL,
            hook TEXT NOT NULL,
            service_id TEXT NOT NULL,
            hook_instance TEXT NOT NULL,
            indicator TEXT NOT NULL,
            score INTEGER,
            rules TEXT NOT NULL,
            reasons TEXT NOT NULL,
            evidence TEXT NOT NULL,
            client_iss TEXT,
            patient TEXT)""",
        "CREATE INDEX card_audit_served_at ON card_audit (served_at)",
        """CREATE TABLE feedback (
            id {serial},
            service_id TEXT NOT NULL,
            card_uuid TEXT NOT NULL,
            outcome TEXT NOT NULL,
            outcome_timestamp TEXT NOT NULL,
            received_at {real} NOT NULL,
            accepted_suggestions TEXT NOT NULL,
            override_code TEXT,
            override_system TEXT,
            client_iss TEXT,
            UNIQUE (service_id, card_uuid, outcome, outcome_timestamp))""",
        "CREATE INDEX feedback_received_at ON feedback (received_at)",
        "CREATE INDEX feedback_card ON feedback (card_uuid)",
        """CREATE TABLE replay_jti (
            iss TEXT NOT NULL,
            jti TEXT NOT NULL,
            expires_at {real} NOT NULL,
            PRIMARY KEY (iss, jti))""",
        "CREATE INDEX replay_jti_expiry ON replay_jti (iss, expires_at)",
        "CREATE TABLE replay_issuer (iss TEXT PRIMARY KEY, entries INTEGER NOT NULL)",
        "CREATE TABLE store_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    )),
    Migration(2, "quiet period: what a card was about, and the cards not shown again", (
        # keyed hash of (service id, patient id): never the id itself, whatever NMS_CDS_AUDIT_PATIENT_IDS says
        "ALTER TABLE card_audit ADD COLUMN quiet_key TEXT",
        "ALTER TABLE card_audit ADD COLUMN decisive TEXT",  # the decisive facts (services/quiet.py), JSON
        "CREATE INDEX card_audit_quiet_key ON card_audit (quiet_key)",
        """CREATE TABLE card_suppressed (
            id {serial},
            suppressed_at {real} NOT NULL,
            hook TEXT NOT NULL,
            service_id TEXT NOT NULL,
            hook_instance TEXT NOT NULL,
            card_uuid TEXT NOT NULL,
            indicator TEXT NOT NULL,
            answered_card_uuid TEXT NOT NULL,
            reason TEXT NOT NULL,
            until {real} NOT NULL,
            client_iss TEXT)""",
        "CREATE INDEX card_suppressed_at ON card_suppressed (suppressed_at)",
    )),
    Migration(3, "background surveillance: patient leases and the worklist", (
        """CREATE TABLE watch_lease (
            patient TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            until {real} NOT NULL)""",
        """CREATE TABLE worklist (
            id {serial},
            patient TEXT NOT NULL,
            patient_ref TEXT NOT NULL,
            finding_key TEXT NOT NULL,
            indicator TEXT NOT NULL,
            summary TEXT NOT NULL,
            card_uuid TEXT NOT NULL,
            evidence TEXT NOT NULL,
            criteria_met_at {real},
            created_at {real} NOT NULL,
            state TEXT NOT NULL,
            state_reason TEXT,
            updated_at {real} NOT NULL,
            delivered_at {real},
            UNIQUE (patient, finding_key))""",
        "CREATE INDEX worklist_state ON worklist (state, created_at)",
    )),
    Migration(4, "card audit: silent mode and the full card", (
        "ALTER TABLE card_audit ADD COLUMN mode TEXT NOT NULL DEFAULT 'live'",
        "ALTER TABLE card_audit ADD COLUMN card TEXT",
    )),
    Migration(5, "card audit: the knowledge version each card was built with", (
        "ALTER TABLE card_audit ADD COLUMN knowledge_version TEXT",
    )),
    Migration(6, "per-client feedback quota", (
        "CREATE INDEX feedback_client_received ON feedback (client_iss, received_at)",
        "CREATE TABLE feedback_client (client TEXT PRIMARY KEY, total INTEGER NOT NULL)",
        "INSERT INTO feedback_client (client, total) "
        "SELECT coalesce(client_iss, ''), count(*) FROM feedback GROUP BY coalesce(client_iss, '')",
    )),
)

CREATE_TRACKING = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
    "applied_at {real} NOT NULL)"
)
LATEST = MIGRATIONS[-1].version
