"""The store interface: card audit, card feedback and the JWT replay cache behind one small protocol.

Backends: :mod:`.sqlite` (embedded default, a file under ``NMS_CDS_DATA_DIR``), :mod:`.postgres`
(``NMS_CDS_DATABASE_URL``); the replay cache alone may live in Redis (:mod:`.redis_replay`,
``NMS_CDS_REDIS_URL``). Every method either does all of its work or raises
:class:`~cds_service.errors.StoreUnavailable` having kept nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

#: Why a token's ``jti`` was refused: seen before, or the issuer's share of the cache is full.
ReplayVerdict = Literal["replay", "full"]

MAX_TEXT = 256  # longest identifier kept in any column (card uuid, hookInstance, codes, iss)
MAX_LIST = 64  # most entries kept per list column (rules, reasons, evidence ids, accepted suggestions)


def clip(value: str | None, limit: int = MAX_TEXT) -> str | None:
    return None if value is None else value[:limit]


def clip_list(values: Sequence[str], limit: int = MAX_TEXT) -> list[str]:
    return [v[:limit] for v in list(dict.fromkeys(values))[:MAX_LIST]]


@dataclass(frozen=True)
class CardRecord:
    """One card served: what an informaticist needs, nothing else of the patient."""

    card_uuid: str
    served_at: float  # epoch seconds (wall clock)
    hook: str
    service_id: str
    hook_instance: str
    indicator: str
    score: int | None
    rules: tuple[str, ...] = ()  # the criteria and findings that fired ("hyperthermia", "ck", "iron-low-…")
    reasons: tuple[str, ...] = ()  # the card's "Why this card" reasons
    evidence: tuple[str, ...] = ()  # ids of the evidence resources ("Observation/t1", "MedicationRequest/d")
    client_iss: str | None = None
    patient: str | None = None  # keyed hash of patientId, or the id itself when the operator opted in
    quiet_key: str | None = None  # keyed hash of (service id, patientId): the quiet period's lookup key
    decisive: str | None = None  # the card's decisive facts (JSON, services/quiet.py): no patient ids
    mode: str = "live"  # "live": returned to the client; "silent": would have shown (silent mode), not returned
    card: str | None = None  # silent mode: the full card as JSON (patient references as the audit stores them)
    knowledge_version: str | None = None  # the knowledge the card was built with (package version + site file)


@dataclass(frozen=True)
class FeedbackRecord:
    service_id: str
    card_uuid: str
    outcome: str  # "accepted" | "overridden"
    outcome_timestamp: str
    received_at: float
    accepted_suggestions: tuple[str, ...] = ()
    override_code: str | None = None
    override_system: str | None = None
    client_iss: str | None = None


@dataclass(frozen=True)
class SuppressedRecord:
    """A card not shown again within the quiet period: which, why, until when (no patient data)."""

    suppressed_at: float
    hook: str
    service_id: str
    hook_instance: str
    card_uuid: str
    indicator: str
    answered_card_uuid: str  # the card whose feedback opened the quiet period
    reason: str
    until: float
    client_iss: str | None = None


@dataclass(frozen=True)
class AnsweredRow:
    """A card of one quiet key answered by feedback (accepted, or overridden with a reason)."""

    card_uuid: str
    decisive: str
    answered_at: float
    outcome: str


@dataclass
class ReportRows:
    """What ``nms-cds report`` aggregates (rows since a time)."""

    cards: list[CardRecord] = field(default_factory=list)
    feedback: list[FeedbackRecord] = field(default_factory=list)
    suppressed: list[SuppressedRecord] = field(default_factory=list)


class ReplayGuard(Protocol):
    """Atomic insert-if-absent of ``(iss, jti)`` kept until ``until`` (epoch seconds)."""

    def claim(self, iss: str, jti: str, until: float, now: float) -> ReplayVerdict | None:
        """None when the pair is new (and now remembered); else why the token must be refused."""
        ...

    def ping(self) -> None:
        """Raise StoreUnavailable when the backend cannot be used."""
        ...

    def close(self) -> None: ...


class Store(ReplayGuard, Protocol):
    backend: str  # "sqlite" | "postgres"

    def record_cards(self, cards: Sequence[CardRecord]) -> None:
        """Audit cards served (a card uuid already audited is kept as first seen)."""
        ...

    def add_feedback(self, items: Sequence[FeedbackRecord]) -> int:
        """Store feedback in one transaction; return how many items were new (repeats are ignored)."""
        ...

    def legacy_hash_key(self) -> str | None:
        """The patient-id hash key (hex) earlier versions kept in the database (see :mod:`.keys`)."""
        ...

    def drop_legacy_hash_key(self) -> None: ...

    def purge(self, *, before: float, now: float) -> dict[str, int]:
        """Delete audit and feedback older than ``before`` and replay entries expired at ``now``."""
        ...

    def report_rows(self, since: float) -> ReportRows: ...

    def answered(self, quiet_key: str, since: float) -> list[AnsweredRow]:
        """Cards audited under ``quiet_key`` with feedback received since ``since``: accepted, or overridden
        with a reason (the newest such feedback per card)."""
        ...

    def record_suppressed(self, items: Sequence[SuppressedRecord]) -> None:
        """Audit cards not shown again within the quiet period."""
        ...
