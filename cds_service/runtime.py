"""Per-process objects shared by requests: settings, services, the FHIR query pool, the store, auth."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cds_service import audit, metrics
from cds_service.auth import Authenticator
from cds_service.auth.policy import ClientPolicy, default_policy
from cds_service.config import AuthMode, Settings
from cds_service.errors import StoreUnavailable
from cds_service.fhir.client import QueryPool
from cds_service.knowledge import Knowledge, default_knowledge, load_knowledge
from cds_service.services import quiet
from cds_service.services.engine import CallReport, CdsService, Engine
from cds_service.services.order_select import OrderSelectPolicy
from cds_service.services.order_sign import OrderSignPolicy
from cds_service.services.patient_view import PatientViewPolicy
from cds_service.store import ReplayGuard, Store, SuppressedRecord, open_replay_guard, open_store
from cds_service.store.keys import audit_key

log = logging.getLogger("cds_service.store")
PURGE_INTERVAL_SECONDS = 3600.0


@dataclass
class Runtime:
    settings: Settings
    services: dict[str, CdsService]
    pool: QueryPool
    store: Store
    replay: ReplayGuard
    authenticator: Authenticator
    clock: Callable[[], datetime]  # the clinical clock (pinned by NMS_CDS_FIXED_NOW)
    hash_key: bytes = b""  # the patient-id hash key (cds_service.store.keys)
    wall_clock: Callable[[], float] = time.time  # audit and feedback times, replay expiry
    _next_purge: float = 0.0
    _purge_lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False
    knowledge: Knowledge = field(default_factory=default_knowledge)  # NMS_CDS_SITE_FILE over the defaults

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        knowledge = load_knowledge(settings.site_file)  # read once; ConfigError before anything is opened
        fixed = settings.fixed_now
        if fixed is not None and fixed.tzinfo is None:
            fixed = fixed.replace(tzinfo=UTC)

        def clock() -> datetime:
            return fixed if fixed is not None else datetime.now(UTC)

        store = open_store(settings)
        try:
            hash_key = audit_key(settings, store)
        except BaseException:
            store.close()
            raise
        replay = open_replay_guard(settings, store)
        pool = QueryPool(settings.fhir_concurrency)
        engine = Engine(settings, pool, clock)
        # Discovery order follows the clinician's workflow: chart opened, drug picked, orders signed.
        policies = (PatientViewPolicy(settings), OrderSelectPolicy(settings), OrderSignPolicy(settings))
        services = {p.id: CdsService(p, engine) for p in policies}
        authenticator = Authenticator(settings, replay=replay) if settings.auth == AuthMode.JWT else \
            Authenticator(settings)
        return cls(settings=settings, services=services, pool=pool, store=store, replay=replay,
                   authenticator=authenticator, clock=clock, knowledge=knowledge, hash_key=hash_key)

    def quiet_cards(self, cards: list[dict[str, Any]], *, hook: str, service_id: str, hook_instance: str,
                    patient_id: str | None, report: CallReport, iss: str | None) -> list[dict[str, Any]]:
        """The cards to answer: none when the clinician answered the same card within the quiet period
        (services/quiet.py). Fails open: a store failure shows the card and counts a metric, never a 500."""
        period = self.settings.quiet_period_hours * 3600.0
        if not cards or hook not in quiet.QUIET_HOOKS or period <= 0 or report.decisive is None or not patient_id:
            return cards
        now = self.wall_clock()
        try:
            key = audit.quiet_key(service_id, patient_id, iss, self.hash_key)
            rows = self.store.answered(key or "", since=now - period)
            answered = [quiet.Answered(r.card_uuid, quiet.Decisive.from_json(r.decisive), r.answered_at, r.outcome)
                        for r in rows]
        except Exception as exc:  # fail open on anything: a store that cannot answer never hides a card
            cause = exc.cause if isinstance(exc, StoreUnavailable) else type(exc).__name__
            log.error("quiet period not checked: card shown", extra={"event": "quiet-failed", "error": cause})
            metrics.quiet_store_failure(hook)
            return cards
        decision = quiet.decide(report.decisive, answered, now=now, period_seconds=period)
        if not decision.suppress or decision.answered is None or decision.until is None:
            return cards
        until = decision.until
        records = [SuppressedRecord(suppressed_at=now, hook=hook, service_id=service_id, hook_instance=hook_instance,
                                    card_uuid=str(card.get("uuid")), indicator=str(card.get("indicator")),
                                    answered_card_uuid=decision.answered.card_uuid, reason=decision.reason,
                                    until=until, client_iss=iss) for card in cards]
        try:
            self.store.record_suppressed(records)
        except StoreUnavailable as exc:  # the decision stands (it was read from the store); its audit row is lost
            log.error("suppressed card not audited", extra={"event": "audit-failed", "error": exc.cause})
        for record in records:
            log.info("card suppressed (quiet period)", extra={
                "event": "card-suppressed", "service": service_id, "card": record.card_uuid,
                "indicator": record.indicator, "answered_card": record.answered_card_uuid,
                "reason": decision.reason, "until": datetime.fromtimestamp(until, UTC).isoformat()})
            metrics.card_suppressed(service_id, hook)
        return []

    def audit_cards(self, cards: Sequence[dict[str, Any]], *, hook: str, service_id: str, hook_instance: str,
                    patient_id: str | None, report: CallReport, iss: str | None, silent: bool = False) -> int:
        """Record every card served (``silent``: every card that would have been, whole); a store failure is
        logged, the answer is still given."""
        if not cards:
            return 0
        try:
            key = self.hash_key
            records = audit.card_records(
                cards, served_at=self.wall_clock(), hook=hook, service_id=service_id, hook_instance=hook_instance,
                score=report.score, rules=report.rules, reasons=report.reasons, evidence=report.evidence, iss=iss,
                patient=audit.patient_token(patient_id, key, opt_in=self.settings.audit_patient_ids),
                quiet=audit.quiet_key(service_id, patient_id, iss, key),
                decisive=report.decisive.to_json() if report.decisive is not None else None,
                silent=silent, patient_id=patient_id, knowledge_version=self.knowledge.version)
            self.store.record_cards(records)
        except StoreUnavailable as exc:
            log.error("card audit not written", extra={"event": "audit-failed", "error": exc.cause})
            return 0
        self.maybe_purge()
        return len(records)

    def policy_for(self, iss: str | None) -> ClientPolicy:
        """The calling client's policy: its own ``policy`` members over the default (authentication off or an
        issuer without them: the default, from the NMS_CDS_POLICY_* settings)."""
        default = default_policy(self.settings)
        client = self.authenticator.clients.get(iss) if iss else None
        return client.policy.over(default) if client is not None and client.policy is not None else default

    def maybe_purge(self) -> None:
        """At most once an hour per process: drop audit and feedback past retention, and expired jti."""
        now = self.wall_clock()
        if now < self._next_purge or not self._purge_lock.acquire(blocking=False):
            return
        try:
            self._next_purge = now + PURGE_INTERVAL_SECONDS
            counts = self.store.purge(before=now - self.settings.audit_retention_days * 86400.0, now=now)
            if any(counts.values()):
                summary = ", ".join(f"{v} {k}" for k, v in counts.items())
                log.info(f"store purged: {summary}", extra={"event": "store-purge"})
        except StoreUnavailable as exc:
            log.warning("store purge failed", extra={"event": "store-purge-failed", "error": exc.cause})
        finally:
            self._purge_lock.release()

    def close(self) -> None:
        """Stop the FHIR query pool, close the replay guard and the store (their files, sockets and pools).
        Idempotent; ``with Runtime.build(settings) as runtime:`` closes on leaving the block."""
        if self.closed:
            return
        self.closed = True
        try:
            self.pool.shutdown()
        finally:
            try:
                self.replay.close()
            finally:
                self.store.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
