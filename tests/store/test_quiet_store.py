"""The quiet period's memory in both stores (SQLite and PostgreSQL): what a card was about, which answers count,
whose feedback counts, the suppressed-card audit, purge, and a card audited before migration 2."""

from __future__ import annotations

from cds_service import audit
from cds_service.store import FeedbackRecord, Store, SuppressedRecord
from cds_service.store.base import CardRecord
from tests.helpers.dbservers import postgres  # noqa: F401  (session fixture)
from tests.store.test_store import backend, store, store_settings  # noqa: F401  (fixtures)

KEY = b"k" * 32
SVC = "nms-patient-view"


def card(uuid: str, *, quiet: str | None = "quiet:p1", iss: str | None = None, at: float = 100.0) -> CardRecord:
    return CardRecord(uuid, at, "patient-view", SVC, "h-1", "warning", 20, ("exposure",), (), (), client_iss=iss,
                      patient="hmac-sha256:x", quiet_key=quiet, decisive='{"indicator":"warning"}' if quiet else None)


def fb(uuid: str, outcome: str = "overridden", *, code: str | None = "patient-ineligible", at: float = 200.0,
       iss: str | None = None, stamp: str = "t1") -> FeedbackRecord:
    return FeedbackRecord(SVC, uuid, outcome, stamp, received_at=at, override_code=code,
                          override_system="http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"
                          if code else None, client_iss=iss)


def test_answered_cards_are_accepted_or_overridden_with_a_reason(store: Store) -> None:  # noqa: F811
    store.record_cards([card("a"), card("b"), card("c"), card("other", quiet="quiet:p2")])
    store.add_feedback([fb("a"), fb("b", code=None), fb("c", "accepted", code=None), fb("other")])
    rows = {r.card_uuid: r for r in store.answered("quiet:p1", since=0)}
    assert set(rows) == {"a", "c"}  # b: overridden without a reason does not count; other: another patient
    assert rows["a"].outcome == "overridden" and rows["c"].outcome == "accepted"
    assert rows["a"].answered_at == 200.0 and rows["a"].decisive == '{"indicator":"warning"}'
    assert store.answered("quiet:p1", since=201.0) == []  # feedback older than the period


def test_the_newest_answer_per_card_counts(store: Store) -> None:  # noqa: F811
    store.record_cards([card("a")])
    store.add_feedback([fb("a", at=200.0, stamp="t1"), fb("a", "accepted", code=None, at=500.0, stamp="t2")])
    [row] = store.answered("quiet:p1", since=0)
    assert row.answered_at == 500.0 and row.outcome == "overridden"  # overridden if any answer was an override


def test_only_the_client_shown_the_card_can_quiet_it(store: Store) -> None:  # noqa: F811
    store.record_cards([card("a", iss="https://ehr-a.example.org")])
    store.add_feedback([fb("a", iss="https://ehr-b.example.org")])
    assert store.answered("quiet:p1", since=0) == []
    store.add_feedback([fb("a", iss="https://ehr-a.example.org", stamp="t2")])
    assert [r.card_uuid for r in store.answered("quiet:p1", since=0)] == ["a"]


def test_a_card_audited_before_the_quiet_period_gets_its_memory_at_its_next_showing(
        store: Store) -> None:  # noqa: F811
    store.record_cards([card("a", quiet=None)])
    store.record_cards([card("a", at=300.0)])
    [row] = store.report_rows(0).cards
    assert row.quiet_key == "quiet:p1" and row.served_at == 100.0  # still the first showing
    store.record_cards([card("a", quiet="quiet:changed")])  # an audited memory is never overwritten
    assert store.report_rows(0).cards[0].quiet_key == "quiet:p1"


def test_suppressed_cards_are_audited_reported_and_purged(store: Store) -> None:  # noqa: F811
    item = SuppressedRecord(150.0, "patient-view", SVC, "h-2", "card-new", "warning", "card-a",
                            "same decisive evidence as card card-a (overridden)", until=86_550.0, client_iss=None)
    store.record_suppressed([item, SuppressedRecord(5000.0, "order-select", "nms-order-select", "h-3", "c", "critical",
                                                    "d", "why", until=90_000.0)])
    assert store.report_rows(0).suppressed[0] == item
    assert store.purge(before=1000.0, now=1000.0)["suppressed"] == 1
    assert [s.hook for s in store.report_rows(0).suppressed] == ["order-select"]


def test_the_quiet_key_is_a_keyed_hash_of_service_client_and_patient() -> None:
    key = audit.quiet_key(SVC, "patient-123", None, KEY)
    assert key is not None and key.startswith("quiet:") and "patient-123" not in key
    assert key == audit.quiet_key(SVC, "patient-123", None, KEY)
    assert key != audit.quiet_key("nms-order-select", "patient-123", None, KEY)
    assert key != audit.quiet_key(SVC, "patient-123", "https://ehr.example.org", KEY)
    assert key != audit.quiet_key(SVC, "patient-123", None, b"x" * 32)
    assert audit.quiet_key(SVC, None, None, KEY) is None
