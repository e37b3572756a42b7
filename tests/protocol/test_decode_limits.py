"""Hostile nesting is refused before decoding: a body 62 levels deep holding 31 MB of tiny arrays cost 14 s of
worker time (decoded, then walked) before the count of values was checked while reading the raw bytes."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from flask import Flask

from bench.scenarios import dumps, long_record_request
from cds_service.errors import PayloadTooLarge
from cds_service.protocol.decode import check_items, load_json
from tests.conftest import app_for, make_settings


def hostile_body(depth: int = 62, arrays: int = 10_000_000) -> bytes:
    """``{"hook": …, "context": [[[…[[],[],…]…]]]}``: ``depth`` levels, ``arrays`` empty arrays (~31 MB)."""
    inner = "[" + ",".join(["[]"] * arrays) + "]"
    return ('{"hook":"order-sign","context":' + "[" * (depth - 3) + inner + "]" * (depth - 3) + "}").encode()


def test_the_count_of_values_is_an_upper_bound_of_what_json_holds() -> None:
    check_items(b'{"a":[1,2,{"b":[]}]}', 6)
    with pytest.raises(PayloadTooLarge, match="up to 8 JSON values"):
        check_items(b'{"a":[1,2,{"b":[]}],"c":"x,y"}', 6)  # the comma in "x,y" counts too


def test_a_legitimate_large_prefetch_is_far_below_the_default_cap() -> None:
    body = dumps(long_record_request(10_000))  # 8.5 MB, the largest benchmark body
    cap = make_settings().max_json_items
    counted = body.count(b"[") + body.count(b"{") + body.count(b",")
    assert counted * 5 < cap  # room for a 32 MiB body of the same kind, and narrative text with commas
    assert isinstance(load_json(body, max_depth=64, max_items=cap), dict)


def test_hostile_nesting_is_refused_before_decoding() -> None:
    body = hostile_body()
    assert len(body) > 30_000_000
    started = time.perf_counter()
    with pytest.raises(PayloadTooLarge):
        load_json(body, max_depth=64, max_items=make_settings().max_json_items)
    took = time.perf_counter() - started
    print(f"hostile body ({len(body) / 1e6:.1f} MB, 62 deep) refused in {took * 1000:.0f} ms")
    assert took < 1.0  # coarse: decoding it took 1.2-5 s on the same machine (bench numbers in docs/security.md)


@pytest.fixture
def small_cap_app() -> Iterator[Flask]:
    with app_for(make_settings(max_json_items=1000)) as app:
        yield app


def test_over_http_the_answer_is_413(small_cap_app: Flask) -> None:
    answer = small_cap_app.test_client().post("/cds-services/nms-order-sign", data=hostile_body(62, 2000),
                                              content_type="application/json")
    assert answer.status_code == 413 and "at most 1000" in answer.get_json()["issue"][0]["diagnostics"]
