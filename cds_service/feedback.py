"""Card feedback store: idempotent, in memory per worker, optionally appended to a JSON-lines file."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any


class FeedbackStore:
    def __init__(self, path: Path | None = None, max_items: int = 10_000) -> None:
        self.path = path
        self.max_items = max_items
        self._seen: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def add(self, service_id: str, items: list[dict[str, Any]]) -> int:
        """Store feedback items; return how many were new (repeats of the same item are ignored)."""
        new = 0
        with self._lock:
            for item in items:
                key = (service_id, item["card"], item["outcome"], item["outcomeTimestamp"])
                if key in self._seen:
                    continue
                if len(self._seen) >= self.max_items:
                    self._seen.pop(next(iter(self._seen)))
                record = {"service": service_id, **item}
                self._seen[key] = record
                new += 1
                if self.path is not None:
                    with self.path.open("a", encoding="utf-8") as fh:
                        fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        return new

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._seen.values())
