"""The in-process replay cache: used only where no store is wired in (unit tests, library use).

Thread-safe, bounded in total and per issuer, expired entries purged on every insert. Per process:
a service run by ``nms-cds serve`` uses the shared store (:mod:`cds_service.store`) instead.
"""

from __future__ import annotations

import heapq
import threading
from collections import Counter

from cds_service.store.base import ReplayVerdict

REPLAY_CACHE_CAPACITY = 100_000


class ReplayCache:
    def __init__(self, capacity: int = REPLAY_CACHE_CAPACITY, max_per_issuer: int | None = None) -> None:
        self.capacity = capacity
        self.max_per_issuer = max_per_issuer or capacity
        self._lock = threading.Lock()
        self._until: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, tuple[str, str]]] = []
        self._per_issuer: Counter[str] = Counter()

    def __len__(self) -> int:
        with self._lock:
            return len(self._until)

    def _purge(self, now: float) -> None:
        while self._heap and self._heap[0][0] < now:
            until, key = heapq.heappop(self._heap)
            if self._until.get(key) == until:
                del self._until[key]
                self._per_issuer[key[0]] -= 1
                if self._per_issuer[key[0]] <= 0:
                    del self._per_issuer[key[0]]

    def add(self, key: tuple[str, str], until: float, now: float) -> ReplayVerdict | None:
        """Record ``key``; return None when it is new, else the reason to refuse ("replay" or "full")."""
        with self._lock:
            self._purge(now)
            if key in self._until:
                return "replay"
            if len(self._until) >= self.capacity or self._per_issuer[key[0]] >= self.max_per_issuer:
                return "full"
            self._until[key] = until
            self._per_issuer[key[0]] += 1
            heapq.heappush(self._heap, (until, key))
            return None

    def claim(self, iss: str, jti: str, until: float, now: float) -> ReplayVerdict | None:
        return self.add((iss, jti), until, now)

    def ping(self) -> None:
        """Always available."""

    def close(self) -> None:
        """Nothing to release."""
