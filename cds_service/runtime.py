"""Per-process objects shared by requests: settings, services, the FHIR query pool, the store, auth."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cds_service import audit
from cds_service.auth import Authenticator
from cds_service.config import AuthMode, Settings
from cds_service.errors import StoreUnavailable
from cds_service.fhir.client import QueryPool
from cds_service.services.engine import CallReport, CdsService, Engine
from cds_service.services.order_select import OrderSelectPolicy
from cds_service.services.order_sign import OrderSignPolicy
from cds_service.services.patient_view import PatientViewPolicy
from cds_service.store import ReplayGuard, Store, open_replay_guard, open_store
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

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
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
                   authenticator=authenticator, clock=clock, hash_key=hash_key)

    def audit_cards(self, cards: Sequence[dict[str, Any]], *, hook: str, service_id: str, hook_instance: str,
                    patient_id: str | None, report: CallReport, iss: str | None) -> int:
        """Record every card served; a store failure is logged, the cards are still answered."""
        if not cards:
            return 0
        try:
            key = self.hash_key
            records = audit.card_records(
                cards, served_at=self.wall_clock(), hook=hook, service_id=service_id, hook_instance=hook_instance,
                score=report.score, rules=report.rules, reasons=report.reasons, evidence=report.evidence, iss=iss,
                patient=audit.patient_token(patient_id, key, opt_in=self.settings.audit_patient_ids))
            self.store.record_cards(records)
        except StoreUnavailable as exc:
            log.error("card audit not written", extra={"event": "audit-failed", "error": exc.cause})
            return 0
        self.maybe_purge()
        return len(records)

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
