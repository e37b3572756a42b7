"""Client-side deadlines for backend calls, and a breaker that stops waiting on a backend known to hang.

A server-side ``statement_timeout`` does nothing when the server process itself is stopped (SIGSTOP, a frozen
VM): the kernel still accepts and acknowledges the bytes, so the client waits on its socket forever (TCP
keepalive and ``tcp_user_timeout`` never fire either). :class:`SocketDeadlines` therefore shuts the socket of a
call still running at its deadline; the blocked read sees end-of-file at once and the driver raises.

:class:`Breaker`: after a backend call timed out, further calls of this process fail at once (same cause)
while a background thread probes the backend about once a second. A hung database thus costs one request per
worker the full deadline; the others get their 503 without waiting, so workers stay free for ``/healthz`` and
``/readyz``, and the service is back within about a second of the backend.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

from cds_service.errors import StoreUnavailable


class SocketDeadlines:
    """One daemon thread per process that shuts down the sockets of calls past their deadline."""

    def __init__(self) -> None:
        self._armed: dict[int, tuple[float, int]] = {}  # token -> (due, fd)
        self._fired: set[int] = set()
        self._cond = threading.Condition()
        self._pid: int | None = None
        self._next = 0

    @contextlib.contextmanager
    def guard(self, fd: int, seconds: float) -> Iterator[set[int]]:
        """Within the block, the socket ``fd`` is shut down after ``seconds``; the yielded set is non-empty
        when that happened (the caller's error was the deadline)."""
        with self._cond:
            if self._pid != os.getpid():  # first use in this process (after gunicorn's fork)
                self._pid = os.getpid()
                self._armed.clear()
                self._fired.clear()
                threading.Thread(target=self._run, name="nms-cds-store-deadline", daemon=True).start()
            self._next += 1
            token = self._next
            self._armed[token] = (time.monotonic() + seconds, fd)
            self._cond.notify()
        fired: set[int] = set()
        try:
            yield fired
        finally:
            with self._cond:
                self._armed.pop(token, None)
                if token in self._fired:
                    self._fired.discard(token)
                    fired.add(token)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for token, (due, fd) in list(self._armed.items()):
                    if due <= now:
                        del self._armed[token]
                        self._fired.add(token)
                        _shutdown(fd)
                nearest = min((due for due, _ in self._armed.values()), default=now + 60.0)
                self._cond.wait(timeout=max(nearest - now, 0.005))


def _shutdown(fd: int) -> None:
    """Shut the connection down (both ways) without closing the caller's descriptor."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()


DEADLINES = SocketDeadlines()


class Breaker:
    """Fail fast while a backend is known to be down (per process; see the module docstring).

    While open, every call raises at once; every ``interval`` seconds one background thread runs ``probe``
    (itself bounded by the deadline) and closes the breaker when it succeeds. Request threads never wait on
    a backend that already timed out."""

    def __init__(self, probe: Callable[[], object], interval: float = 1.0) -> None:
        self.probe = probe
        self.interval = interval
        self._lock = threading.Lock()
        self._cause = ""
        self._next_probe = 0.0
        self._probing = False

    def before(self) -> None:
        """Raise StoreUnavailable (the last cause) while open."""
        if not self._cause:  # unlocked read: the common, closed case costs nothing
            return
        with self._lock:
            cause = self._cause
            if not cause:
                return
            if not self._probing and time.monotonic() >= self._next_probe:
                self._probing = True
                threading.Thread(target=self._probe, name="nms-cds-store-probe", daemon=True).start()
        raise StoreUnavailable(cause)

    def _probe(self) -> None:
        try:
            self.probe()
        except StoreUnavailable as exc:
            self.failed(exc.cause)
        except Exception:  # any other failure: try again later with the same cause
            self.failed(self._cause)
        else:
            self.succeeded()
        finally:
            with self._lock:
                self._probing = False

    def failed(self, cause: str) -> None:
        with self._lock:
            self._cause = cause
            self._next_probe = time.monotonic() + self.interval

    def succeeded(self) -> None:
        if self._cause:
            with self._lock:
                self._cause = ""
