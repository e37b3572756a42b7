"""Per-process objects shared by requests: settings, services, the FHIR query pool, feedback, auth."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cds_service.auth import Authenticator
from cds_service.config import Settings
from cds_service.feedback import FeedbackStore
from cds_service.fhir.client import QueryPool
from cds_service.services.engine import CdsService, Engine
from cds_service.services.order_sign import OrderSignPolicy


@dataclass
class Runtime:
    settings: Settings
    services: dict[str, CdsService]
    pool: QueryPool
    feedback: FeedbackStore
    authenticator: Authenticator
    clock: Callable[[], datetime]

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        fixed = settings.fixed_now
        if fixed is not None and fixed.tzinfo is None:
            fixed = fixed.replace(tzinfo=UTC)

        def clock() -> datetime:
            return fixed if fixed is not None else datetime.now(UTC)

        pool = QueryPool(settings.fhir_concurrency)
        engine = Engine(settings, pool, clock)
        service = CdsService(OrderSignPolicy(settings), engine)
        return cls(
            settings=settings,
            services={service.id: service},
            pool=pool,
            feedback=FeedbackStore(settings.feedback_log),
            authenticator=Authenticator(settings),
            clock=clock,
        )
