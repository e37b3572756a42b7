"""A client's jwks_url: only the allowlisted URL is fetched, cached, refreshed at a limited rate, never blocking."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import responses
from flask import Flask

from cds_service.auth import Authenticator
from tests.conftest import make_settings
from tests.helpers import security
from tests.helpers.jwt_helpers import (
    ec_key,
    jwks,
    write_trusted_clients,
)
from tests.helpers.security import (
    BASE,
    DISCOVERY,
    JWKS_URL,
    ROTATING_ISS,
    Clock,
    logged_text,
    send,
    token,
)

# the shared fixtures: a JWT-mode app factory, its app and client, recorded outbound calls, debug logs
_debug_logs, app, build, client, outbound = (security._debug_logs, security.app, security.build, security.client,
                                             security.outbound)


# --- jwks_url: allowlisted fetch, cache, rate-limited refresh -----------------------------------------


def test_unknown_kid_fetches_only_the_allowlisted_jwks_url_rate_limited(build: Callable[..., Flask],
                                                                       outbound: responses.RequestsMock) -> None:
    clock = Clock()
    client = build(clock=clock).test_client()
    first, second = ec_key("rot-1"), ec_key("rot-2")
    outbound.get(JWKS_URL, json=jwks(first))
    assert send(client, "GET", DISCOVERY, jwt_token=token(first, iss=ROTATING_ISS, path=DISCOVERY,
                                                          headers={"jku": JWKS_URL})).status_code == 200
    assert len(outbound.calls) == 1
    # cached: a second token with the same kid does not fetch again
    assert send(client, "GET", DISCOVERY, jwt_token=token(first, iss=ROTATING_ISS, path=DISCOVERY)).status_code == 200
    assert len(outbound.calls) == 1
    # rotation: the new kid is unknown; within the refresh interval no fetch happens
    outbound.replace(responses.GET, JWKS_URL, json=jwks(first, second))
    clock.now += 10
    assert send(client, "GET", DISCOVERY,
                jwt_token=token(second, iss=ROTATING_ISS, path=DISCOVERY, now=clock.now)).status_code == 401
    assert len(outbound.calls) == 1
    # after the interval, an unknown kid triggers one refresh and the rotated key works
    clock.now += 60
    assert send(client, "GET", DISCOVERY,
                jwt_token=token(second, iss=ROTATING_ISS, path=DISCOVERY, now=clock.now)).status_code == 200
    assert len(outbound.calls) == 2
    assert all(c.request.url == JWKS_URL for c in outbound.calls)


def test_jwks_url_redirect_is_not_followed(build: Callable[..., Flask], outbound: responses.RequestsMock) -> None:
    key = ec_key("rot-1")
    outbound.get(JWKS_URL, status=302, headers={"Location": "https://attacker.example.net/jwks.json"})
    outbound.get("https://attacker.example.net/jwks.json", json=jwks(key))
    resp = send(build().test_client(), "GET", DISCOVERY, jwt_token=token(key, iss=ROTATING_ISS, path=DISCOVERY))
    assert resp.status_code == 401
    assert [c.request.url for c in outbound.calls] == [JWKS_URL]


@pytest.mark.parametrize("answer", [
    {"body": "x" * (70 * 1024), "content_type": "application/json"},
    {"body": "not json", "content_type": "application/json"},
    {"status": 500, "json": {}},
    {"json": {"keys": [{"kty": "oct", "kid": "rot-1", "k": "c2VjcmV0"}]}},
], ids=["too-large", "not-json", "http-500", "symmetric-key"])
def test_unusable_jwks_answers_give_401(build: Callable[..., Flask], outbound: responses.RequestsMock,
                                        caplog: pytest.LogCaptureFixture, answer: dict[str, Any]) -> None:
    outbound.get(JWKS_URL, **answer)
    jwt_token = token(ec_key("rot-1"), iss=ROTATING_ISS, path=DISCOVERY)
    resp = send(build().test_client(), "GET", DISCOVERY, jwt_token=jwt_token)
    assert resp.status_code == 401
    assert len(outbound.calls) == 1
    assert "c2VjcmV0" not in logged_text(caplog)


@pytest.mark.parametrize("answer", [
    {"json": {"keys": []}},
    {"json": {"keys": [{"kty": "oct", "kid": "rot-1", "k": "c2VjcmV0"}]}},
    {"json": {"keys": [{"kty": "EC", "crv": "P-521", "kid": "x", "x": "AA", "y": "AA"}]}},
    {"body": "<html>maintenance</html>", "content_type": "text/html"},
    {"json": {"keys": "none"}},
    {"status": 503, "json": {}},
    {"body": "[" * 60000, "content_type": "application/json"},
], ids=["empty-set", "only-oct", "only-unsupported", "garbage", "keys-not-array", "http-503", "nested-60000-deep"])
def test_a_refresh_without_a_usable_key_keeps_the_previous_keys(build: Callable[..., Flask],
                                                                outbound: responses.RequestsMock,
                                                                caplog: pytest.LogCaptureFixture,
                                                                answer: dict[str, Any]) -> None:
    """The red-team run: after one token with a random kid made the client's JWKS answer ``{"keys":[]}``,
    that client's valid tokens got 401 for 62 s. A set without a usable key now never replaces the cache."""
    clock = Clock()
    client = build(clock=clock).test_client()
    key = ec_key("rot-1")
    outbound.get(JWKS_URL, json=jwks(key))

    def valid() -> int:
        return int(send(client, "GET", DISCOVERY,
                        jwt_token=token(key, iss=ROTATING_ISS, path=DISCOVERY, now=clock.now)).status_code)

    assert valid() == 200
    outbound.replace(responses.GET, JWKS_URL, **answer)
    clock.now += 61  # past the refresh interval: an unauthenticated random kid may trigger a refresh
    forged = token(ec_key("random-kid"), iss=ROTATING_ISS, path=DISCOVERY, now=clock.now)
    assert send(client, "GET", DISCOVERY, jwt_token=forged).status_code == 401
    assert len(outbound.calls) == 2
    assert [valid() for _ in range(3)] == [200, 200, 200]  # at once, and without another fetch
    assert len(outbound.calls) == 2
    # an hour later the set is old: the request is answered from the cache and one refresh runs behind it
    clock.now += 3600
    assert valid() == 200
    client.application.extensions["nms_cds"].authenticator.join_refreshes()
    assert len(outbound.calls) == 3
    assert valid() == 200
    assert "c2VjcmV0" not in logged_text(caplog)
    if isinstance(answer.get("json", {}).get("keys"), list):
        assert any("keeping the 1 key(s)" in r.getMessage() for r in caplog.records)


def test_a_usable_refreshed_set_replaces_the_old_one(build: Callable[..., Flask],
                                                     outbound: responses.RequestsMock) -> None:
    """Removal still works: a set that has usable keys replaces the cache, so a removed key stops working."""
    clock = Clock()
    client = build(clock=clock).test_client()
    old, new = ec_key("rot-1"), ec_key("rot-2")
    outbound.get(JWKS_URL, json=jwks(old))
    assert send(client, "GET", DISCOVERY, jwt_token=token(old, iss=ROTATING_ISS, path=DISCOVERY)).status_code == 200
    outbound.replace(responses.GET, JWKS_URL, json=jwks(new))
    clock.now += 61
    assert send(client, "GET", DISCOVERY, jwt_token=token(new, iss=ROTATING_ISS, path=DISCOVERY,
                                                          now=clock.now)).status_code == 200
    assert send(client, "GET", DISCOVERY, jwt_token=token(old, iss=ROTATING_ISS, path=DISCOVERY,
                                                          now=clock.now)).status_code == 401


class _SlowJwks:
    """A loopback JWK Set endpoint whose answers can be delayed; counts requests; signals each arrival."""

    def __init__(self, body: dict[str, Any]) -> None:
        import http.server

        self.body = json.dumps(body).encode()
        self.delay = 0.0
        self.requests = 0
        self.arrived = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                outer.arrived.set()
                time.sleep(outer.delay)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow_jwks() -> Iterator[_SlowJwks]:
    server = _SlowJwks(jwks(ec_key("rot-1")))
    yield server
    server.close()


def _timed_verify(authenticator: Authenticator, authorization: str) -> tuple[str, float]:
    started = time.perf_counter()
    try:
        authenticator.verify(authorization, BASE + DISCOVERY)
        outcome = "ok"
    except Exception as exc:  # Unauthorized
        outcome = getattr(exc, "reason", type(exc).__name__)
    return outcome, time.perf_counter() - started


def test_a_slow_jwks_refresh_never_blocks_requests_whose_key_is_cached(tmp_path: Path,
                                                                       slow_jwks: _SlowJwks) -> None:
    """The red-team run (``--threads 8``): 4 valid requests waited 2.7 s behind one slow refresh under the
    refresh lock. Now the lock is never held during a fetch: cached keys answer at once, one refresh per client
    is in flight, and a second unknown kid during it fails fast instead of holding a thread."""
    path = write_trusted_clients(tmp_path / "t.json", [{"iss": ROTATING_ISS, "jwks_url": slow_jwks.url}])
    clock = Clock()
    authenticator = Authenticator(make_settings(auth="jwt", trusted_clients=path, public_base_url=BASE), clock=clock)
    key = ec_key("rot-1")

    def valid() -> str:
        return "Bearer " + token(key, iss=ROTATING_ISS, path=DISCOVERY, now=clock.now)

    assert _timed_verify(authenticator, valid())[0] == "ok"  # first use: fetched (fast)
    assert slow_jwks.requests == 1
    slow_jwks.delay, clock.now = 2.0, clock.now + 61
    slow_jwks.arrived.clear()
    results: dict[str, tuple[str, float]] = {}

    def run(name: str, authorization: str) -> None:
        results[name] = _timed_verify(authenticator, authorization)

    refresher = threading.Thread(target=run, args=("refresh", "Bearer " + token(
        ec_key("random-kid"), iss=ROTATING_ISS, path=DISCOVERY, now=clock.now)))
    refresher.start()
    assert slow_jwks.arrived.wait(5)  # the refresh is now in flight
    threads = [threading.Thread(target=run, args=(f"valid-{i}", valid())) for i in range(4)]
    threads.append(threading.Thread(target=run, args=("second-unknown", "Bearer " + token(
        ec_key("random-2"), iss=ROTATING_ISS, path=DISCOVERY, now=clock.now))))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    refresher.join(10)
    for i in range(4):
        outcome, seconds = results[f"valid-{i}"]
        assert outcome == "ok" and seconds < 0.5, results  # was 2.7 s behind the lock
    assert results["second-unknown"][0].startswith("unknown kid") and results["second-unknown"][1] < 0.5
    assert results["refresh"][0].startswith("unknown kid") and results["refresh"][1] >= 1.9
    assert slow_jwks.requests == 2  # one refresh in flight per client


def test_on_a_cold_start_concurrent_requests_share_one_fetch(tmp_path: Path, slow_jwks: _SlowJwks) -> None:
    path = write_trusted_clients(tmp_path / "t.json", [{"iss": ROTATING_ISS, "jwks_url": slow_jwks.url}])
    authenticator = Authenticator(make_settings(auth="jwt", trusted_clients=path, public_base_url=BASE),
                                  clock=Clock())
    slow_jwks.delay = 0.5
    results: dict[int, tuple[str, float]] = {}
    tokens = ["Bearer " + token(ec_key("rot-1"), iss=ROTATING_ISS, path=DISCOVERY) for _ in range(4)]

    def run(i: int) -> None:
        results[i] = _timed_verify(authenticator, tokens[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert [results[i][0] for i in range(4)] == ["ok"] * 4, results
    assert slow_jwks.requests == 1
