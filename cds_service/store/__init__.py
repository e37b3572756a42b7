"""Persistent, shared state: card audit, card feedback, the quiet period's memory and the JWT replay cache.

:func:`open_store` picks the backend from the settings: PostgreSQL when ``NMS_CDS_DATABASE_URL`` is
set, else the SQLite file under ``NMS_CDS_DATA_DIR``; :func:`open_replay_guard` puts the replay cache
in Redis when ``NMS_CDS_REDIS_URL`` is set, else in that store. See docs/operations.md "Persistence".
"""

from __future__ import annotations

from cds_service.config import Settings
from cds_service.store.base import (
    AnsweredRow,
    CardRecord,
    FeedbackRecord,
    ReplayGuard,
    ReplayVerdict,
    ReportRows,
    Store,
    SuppressedRecord,
)
from cds_service.store.memory import ReplayCache


def open_store(settings: Settings) -> Store:
    """Open (and migrate) the configured store; StoreUnavailable names the cause."""
    if settings.database_url is not None:
        from cds_service.store.postgres import PostgresStore

        return PostgresStore(settings.database_url.get_secret_value(), timeout=settings.store_timeout_seconds,
                             max_per_issuer=settings.replay_max_per_issuer,
                             feedback_per_hour=settings.feedback_quota_per_hour,
                             feedback_total=settings.feedback_quota_total)
    from cds_service.store.sqlite import SqliteStore

    return SqliteStore.in_dir(settings.data_dir, timeout=settings.store_timeout_seconds,
                              max_per_issuer=settings.replay_max_per_issuer,
                              feedback_per_hour=settings.feedback_quota_per_hour,
                              feedback_total=settings.feedback_quota_total)


def open_replay_guard(settings: Settings, store: Store) -> ReplayGuard:
    if settings.redis_url is not None:
        from cds_service.store.redis_replay import RedisReplayGuard

        return RedisReplayGuard(settings.redis_url.get_secret_value(), timeout=settings.store_timeout_seconds,
                                max_per_issuer=settings.replay_max_per_issuer)
    return store


__all__ = [
    "AnsweredRow",
    "CardRecord",
    "FeedbackRecord",
    "ReplayCache",
    "ReplayGuard",
    "ReplayVerdict",
    "ReportRows",
    "Store",
    "SuppressedRecord",
    "open_replay_guard",
    "open_store",
]
