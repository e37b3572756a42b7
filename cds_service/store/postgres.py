"""The PostgreSQL store (``NMS_CDS_DATABASE_URL``), for production and for several replicas.

psycopg 3, one connection per thread (gunicorn sync workers have one thread; gthread workers a few),
opened lazily after ``fork`` and replaced when it breaks. A call that fails on a connection that was
already open is retried once on a fresh one (the server restarted in between); every write is an
``ON CONFLICT DO NOTHING`` insert or runs under a row lock, so the retry cannot store anything twice.
Replay claims lock the issuer's counter row (``SELECT … FOR UPDATE``); migrations run under
``pg_advisory_xact_lock`` so that replicas starting together apply each step once.

Deadlines (all ``NMS_CDS_STORE_TIMEOUT_SECONDS``): ``connect_timeout`` (libpq's minimum is 2 s), server-side
``statement_timeout`` and ``lock_timeout``, TCP keepalives and ``tcp_user_timeout`` against a lost network,
and a client-side deadline (0.5 s later) on each transaction (:mod:`.deadline`) against a server that accepts bytes and
never answers (a stopped process). There is no pool to wait on: one connection per thread.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors

from cds_service.errors import StoreUnavailable
from cds_service.store.deadline import DEADLINES, Breaker
from cds_service.store.sql import Cursor, SqlStore

T = TypeVar("T")
HUNG = "PostgreSQL did not answer within the store timeout"
DEADLINE_GRACE = 0.5  # the client deadline leaves a live server's own timeouts time to answer first
UNREACHABLE = "cannot reach the PostgreSQL server within the store timeout"
MIGRATION_LOCK = 7_345_001  # pg_advisory_xact_lock key of nms-cds migrations


def cause_of(exc: psycopg.Error) -> str:
    """The failure in words: never the URL, host, user or password."""
    if isinstance(exc, pg_errors.ConnectionTimeout):
        return UNREACHABLE
    if isinstance(exc, pg_errors.LockNotAvailable):
        return "a PostgreSQL table or row stayed locked longer than the store timeout"
    if isinstance(exc, pg_errors.QueryCanceled):
        return "a PostgreSQL statement timed out"
    if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
        return "PostgreSQL is read-only (a standby?)"
    if isinstance(exc, pg_errors.DiskFull):
        return "the PostgreSQL server's disk is full"
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return "the PostgreSQL user lacks a privilege"
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        return f"PostgreSQL error (SQLSTATE {sqlstate})"
    if isinstance(exc, psycopg.OperationalError):
        return "cannot reach the PostgreSQL server"
    return f"PostgreSQL error ({type(exc).__name__})"


class PostgresStore(SqlStore):
    backend = "postgres"
    for_update = " FOR UPDATE"

    def __init__(self, url: str, *, timeout: float = 5.0, max_per_issuer: int = 100_000,
                 feedback_per_hour: int = 0, feedback_total: int = 0) -> None:
        super().__init__(max_per_issuer=max_per_issuer, feedback_per_hour=feedback_per_hour,
                         feedback_total=feedback_total)
        self._url = url
        self.timeout = timeout
        self._local = threading.local()
        self._open: set[psycopg.Connection[Any]] = set()  # every thread's connection, so that close() closes all
        self._open_lock = threading.Lock()
        self._open_pid = os.getpid()
        self._breaker = Breaker(self._probe)
        self.migrated = self._run(self._migrate_locked)

    def _migrate_locked(self, cur: Cursor) -> list[int]:
        cur.x("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
        return self._migrate(cur)

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self._url,
            connect_timeout=max(2, math.ceil(self.timeout)),
            options=f"-c statement_timeout={int(self.timeout * 1000)} -c lock_timeout={int(self.timeout * 1000)}",
            application_name="nms-cds",
            keepalives=1,
            keepalives_idle=max(1, math.ceil(self.timeout)),
            keepalives_interval=1,
            keepalives_count=3,
            tcp_user_timeout=int(self.timeout * 1000),
        )

    def _connection(self) -> tuple[psycopg.Connection[Any], bool]:
        """This thread's connection, and whether it was opened before (so may have gone stale)."""
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is not None and (getattr(self._local, "pid", None) != os.getpid() or conn.closed):
            self._local.conn = conn = None  # inherited across fork, or closed: never reuse
        if conn is not None:
            return conn, True
        conn = self._connect()
        self._local.conn, self._local.pid = conn, os.getpid()
        with self._open_lock:
            if self._open_pid != os.getpid():  # inherited across fork: not ours to close
                self._open, self._open_pid = set(), os.getpid()
            self._open.add(conn)
        return conn, False

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            with self._open_lock:
                self._open.discard(conn)
            with contextlib.suppress(psycopg.Error):  # closing a broken connection
                conn.close()

    def _run(self, fn: Callable[[Cursor], T], *, durable: bool = False, lock: bool = False,
             read_only: bool = False) -> T:
        self._breaker.before()  # StoreUnavailable at once while the server is known to hang
        try:
            result = self._attempts(fn)
        except StoreUnavailable as exc:
            if exc.cause in (HUNG, UNREACHABLE):
                self._breaker.failed(exc.cause)
            raise
        self._breaker.succeeded()
        return result

    def _probe(self) -> None:
        """The breaker's background check (its own thread, so its own connection, closed afterwards)."""
        try:
            self._attempts(lambda cur: cur.x("SELECT 1").fetchone())
        finally:
            self._drop()

    def _attempts(self, fn: Callable[[Cursor], T]) -> T:
        for attempt in (1, 2):
            reused = False
            conn: psycopg.Connection[Any] | None = None
            fired: set[int] = set()
            try:
                conn, reused = self._connection()
                with DEADLINES.guard(conn.pgconn.socket, self.timeout + DEADLINE_GRACE) as fired:
                    try:
                        with conn.cursor() as cursor:
                            result = fn(Cursor(cursor, "postgres"))
                        conn.commit()
                        return result
                    except BaseException:
                        if not conn.closed:
                            try:
                                conn.rollback()
                            except psycopg.Error:
                                self._drop()
                        raise
            except psycopg.OperationalError as exc:
                broken = conn is None or conn.broken or conn.closed
                self._drop()
                if fired:  # our deadline shut the socket: the server hangs, a retry would hang as long
                    raise StoreUnavailable(HUNG) from None
                if attempt == 1 and reused and broken:
                    continue  # the server restarted since this connection was opened: one fresh try
                raise StoreUnavailable(cause_of(exc)) from None
            except psycopg.Error as exc:
                if fired:
                    self._drop()
                    raise StoreUnavailable(HUNG) from None
                raise StoreUnavailable(cause_of(exc)) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Close every thread's connection opened by this process."""
        self._drop()
        with self._open_lock:
            conns = self._open if self._open_pid == os.getpid() else set()
            self._open = set()
        for conn in conns:
            with contextlib.suppress(psycopg.Error):
                conn.close()
