"""The jti replay cache: expired entries forgotten, bounded, thread-safe."""

from __future__ import annotations

import threading

from cds_service.auth import ReplayCache
from tests.helpers import security

# the shared fixtures: a JWT-mode app factory, its app and client, recorded outbound calls, debug logs
_debug_logs, app, build, client, outbound = (security._debug_logs, security.app, security.build, security.client,
                                             security.outbound)


# --- replay cache -----------------------------------------------------------------------------------------


def test_replay_cache_forgets_expired_entries_and_is_bounded() -> None:
    cache = ReplayCache(capacity=3)
    assert cache.add(("i", "a"), until=100, now=0) is None
    assert cache.add(("i", "a"), until=100, now=50) == "replay"
    assert cache.add(("j", "a"), until=100, now=50) is None  # keyed by (iss, jti)
    assert cache.add(("i", "b"), until=200, now=50) is None
    assert cache.add(("i", "c"), until=200, now=60) == "full"  # fails closed
    assert cache.add(("i", "c"), until=300, now=101) is None  # the two until=100 entries were evicted
    assert len(cache) == 2
    assert cache.add(("i", "a"), until=400, now=150) is None  # a forgotten jti belongs to an expired token


def test_replay_cache_is_thread_safe() -> None:
    cache = ReplayCache()
    results: list[str | None] = []
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        results.append(cache.add(("iss", "same-jti"), until=100, now=0))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(None) == 1 and results.count("replay") == 15
