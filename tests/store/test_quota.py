"""Per-client feedback quota (rows per hour and in total: 429 with Retry-After) and the free-disk floor of
/readyz."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from flask import Flask

from cds_service.config import Settings
from cds_service.errors import QuotaExceeded
from cds_service.store import open_store
from tests.conftest import app_for, make_settings
from tests.helpers.dbservers import postgres  # noqa: F401  (session fixture)
from tests.protocol.test_openapi import assert_documented
from tests.store.test_store import (  # noqa: F401  (fixtures)
    _feedback_body,
    backend,
    feedback_item,
    make_app,
    store_settings,
)

URL = "/cds-services/nms-order-sign"


def _items(n: int, iss: str | None, start: int = 0, at: float = 10_000.0) -> list[Any]:
    return [replace(feedback_item(card=f"{iss}-card-{i}"), client_iss=iss, received_at=at)
            for i in range(start, start + n)]


def test_hourly_quota_is_per_client_and_counts_only_new_rows(
        store_settings: Callable[..., Settings]) -> None:  # noqa: F811
    store = open_store(store_settings(feedback_quota_per_hour=5, feedback_quota_total=0))
    try:
        assert store.add_feedback(_items(5, "https://a.example")) == 5
        assert store.add_feedback(_items(5, "https://a.example")) == 0  # repeats are no new rows
        with pytest.raises(QuotaExceeded) as refused:
            store.add_feedback(_items(1, "https://a.example", start=5, at=10_100.0))
        assert refused.value.status == 429 and refused.value.retry_after == 3500  # the oldest row ages out then
        assert store.add_feedback(_items(5, "https://b.example")) == 5  # another client is not affected
        assert store.add_feedback(_items(2, None)) == 2
        assert len(store.report_rows(0).feedback) == 12  # the refused batch kept nothing
        assert store.add_feedback(_items(1, "https://a.example", start=5, at=13_601.0)) == 1  # an hour later
    finally:
        store.close()


def test_total_quota_counts_rows_kept_and_purge_frees_them(
        store_settings: Callable[..., Settings]) -> None:  # noqa: F811
    store = open_store(store_settings(feedback_quota_per_hour=0, feedback_quota_total=4))
    try:
        assert store.add_feedback(_items(4, "https://a.example", at=100.0)) == 4
        with pytest.raises(QuotaExceeded, match="4 stored rows"):
            store.add_feedback(_items(1, "https://a.example", start=4, at=200.0))
        assert store.purge(before=150.0, now=150.0)["feedback"] == 4
        assert store.add_feedback(_items(4, "https://a.example", start=4, at=200.0)) == 4
    finally:
        store.close()


def test_quota_over_http_is_429_with_retry_after(make_app: Callable[..., Flask]) -> None:  # noqa: F811
    app = make_app(feedback_quota_per_hour=2)
    client = app.test_client()
    for card in ("c1", "c2"):
        assert client.post(URL + "/feedback", json=_feedback_body(card)).status_code == 200
    refused = client.post(URL + "/feedback", json=_feedback_body("c3"))
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    assert refused.get_json()["issue"][0]["code"] == "throttled"
    assert_documented(client.get("/openapi.json").get_json(), "/cds-services/{service_id}/feedback", "post", refused)
    assert client.post(URL + "/feedback", json=_feedback_body("c1")).status_code == 200  # a resend is no new row


def test_readyz_is_not_ready_below_the_free_disk_floor() -> None:
    with app_for(make_settings(min_free_disk_bytes=2**60)) as app:  # an exbibyte: more than any test disk
        answer = app.test_client().get("/readyz")
        assert answer.status_code == 503
        problems = [i["diagnostics"] for i in answer.get_json()["issue"]]
        assert any(p.startswith("data directory:") and "below the" in p for p in problems)
        assert any(p.startswith("temporary directory:") for p in problems)
    with app_for(make_settings(min_free_disk_bytes="1MiB")) as app:
        assert app.test_client().get("/readyz").status_code == 200
