"""Per-request guards of a worker process (used by the hook routes; the design is in docs/reliability.md).

- **Watchdog**: a request still running after ``NMS_CDS_REQUEST_TIMEOUT_SECONDS`` gets
  :class:`~cds_service.errors.ServiceOverrun` raised in its thread, which the error handlers answer as a 503
  JSON error; gunicorn's own ``timeout`` (which kills the worker and sends an HTML page) is set 10 s later.
- **Collector pause** (:class:`GcPause`): the cyclic garbage collector is paused while requests run, so that it
  never walks a request's decoded JSON (a 10,000-Observation prefetch is about a million objects, all new, so
  every young-generation collection during the request walked them: about 50 ms of 235 ms, bench/README.md).
  Reference counting frees the request's data as usual; the collector runs again when no request is running.
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time

from cds_service.errors import ServiceOverrun

# --- request watchdog ---------------------------------------------------------------------------------------

def _raise_in_thread(ident: int, exc: type[BaseException]) -> bool:
    count = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc))
    if count > 1:  # pragma: no cover - cannot happen for one live thread id; undo as the C API asks
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)
        return False
    return bool(count)


class RequestWatchdog:
    """Raises :class:`ServiceOverrun` in a request thread that is still armed after ``seconds``.

    The exception is delivered when the thread next runs Python bytecode (a C call in progress finishes
    first); the error handler answers it, the worker and its other threads go on. One daemon thread per
    process, started on first use (so after gunicorn's fork).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._armed: dict[int, float] = {}
        self._cond = threading.Condition()
        self._pid: int | None = None

    def arm(self) -> None:
        with self._cond:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._armed.clear()
                threading.Thread(target=self._run, name="nms-cds-watchdog", daemon=True).start()
            was_empty = not self._armed
            self._armed[threading.get_ident()] = time.monotonic() + self.seconds
            if was_empty:
                self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._armed.pop(threading.get_ident(), None)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for ident, due in list(self._armed.items()):
                    if due <= now:
                        del self._armed[ident]
                        _raise_in_thread(ident, ServiceOverrun)
                nearest = min(self._armed.values(), default=now + 60.0)
                self._cond.wait(timeout=max(nearest - now, 0.005))


class GcPause:
    """Pauses the cyclic garbage collector from the first running request until none is running.

    A request's JSON makes no reference cycles, and all of it is freed by reference counting when the request
    ends; a collection during the request can free nothing of it and only walks it. With overlapping requests
    (gthread workers) the pause could last indefinitely, so a running pause older than ``max_seconds`` makes
    the request that ends then run one full collection and start a new pause. A collector that was off before
    (``gc.disable()`` by the embedding program) stays off.
    """

    def __init__(self, max_seconds: float = 2.0) -> None:
        self.max_seconds = max_seconds
        self._lock = threading.Lock()
        self._running = 0
        self._since = 0.0
        self._resume = False

    def enter(self) -> None:
        with self._lock:
            if self._running == 0:
                self._resume = gc.isenabled()
                gc.disable()
                self._since = time.monotonic()
            self._running += 1

    def exit(self) -> None:
        collect = False
        with self._lock:
            if self._running == 0:  # pragma: no cover - an exit without its enter
                return
            self._running -= 1
            if self._running == 0:
                if self._resume:
                    gc.enable()
            elif self._resume and time.monotonic() - self._since > self.max_seconds:
                collect = True
                self._since = time.monotonic()
        if collect:  # outside the lock: other requests start and end meanwhile
            gc.collect()

