"""The embedded store: one SQLite file under ``NMS_CDS_DATA_DIR``, safe for several gunicorn workers.

Each thread keeps its own connection (opened lazily, never inherited across ``fork``, dropped after
an error), in WAL mode so readers never block the writer, and takes the write lock up front
(``BEGIN IMMEDIATE``) so that concurrent writers queue for up to ``NMS_CDS_STORE_TIMEOUT_SECONDS``
instead of failing half-way. Feedback commits with ``synchronous=FULL`` (on disk before the 200);
audit and replay entries with ``NORMAL`` (safe against a killed process, not against power loss).

Connections open the file in ``mode=rw``: a file that disappeared is an error (503), never a
silently recreated empty database. (A connection per operation would be simpler but costs about
25 ms each: closing the last connection checkpoints and deletes the WAL file.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cds_service.errors import StoreUnavailable
from cds_service.store.sql import Cursor, SqlStore

T = TypeVar("T")
FILENAME = "nms-cds.sqlite3"

_CAUSES = {
    "SQLITE_BUSY": "the SQLite database is locked by another process",
    "SQLITE_LOCKED": "the SQLite database is locked",
    "SQLITE_CANTOPEN": "the SQLite database file cannot be opened",
    "SQLITE_READONLY": "the SQLite database is read-only",
    "SQLITE_FULL": "the disk holding the SQLite database is full",
    "SQLITE_IOERR": "disk I/O error on the SQLite database",
    "SQLITE_CORRUPT": "the SQLite database file is corrupt",
    "SQLITE_NOTADB": "the SQLite database file is not a database",
    "SQLITE_PERM": "no permission to use the SQLite database",
}


def cause_of(exc: sqlite3.Error) -> str:
    """The failure in words, without the file's path."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    for prefix, words in _CAUSES.items():
        if name.startswith(prefix):
            return f"{words} ({name})"
    if isinstance(exc, sqlite3.OperationalError) and "no such table" in str(exc):
        return "the SQLite database has no schema (file replaced?)"
    return f"SQLite error ({name or type(exc).__name__})"


class SqliteStore(SqlStore):
    backend = "sqlite"

    def __init__(self, path: Path, *, timeout: float = 5.0, max_per_issuer: int = 100_000) -> None:
        super().__init__(max_per_issuer=max_per_issuer)
        self.path = path.resolve()
        self.timeout = timeout
        self._uri = self.path.as_uri() + "?mode=rw"
        self._local = threading.local()
        self._open: set[sqlite3.Connection] = set()  # every thread's connection, so that close() closes them all
        self._open_lock = threading.Lock()
        self._open_pid = os.getpid()
        self.migrated = self._setup()

    @classmethod
    def in_dir(cls, data_dir: Path, **kwargs: float | int) -> SqliteStore:
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"the data directory cannot be created ({type(exc).__name__})") from None
        return cls(data_dir / FILENAME, **kwargs)  # type: ignore[arg-type]

    def _setup(self) -> list[int]:
        """Create the file, switch it to WAL and migrate, one process (or thread) at a time.

        ``PRAGMA journal_mode=WAL`` answers SQLITE_BUSY at once, without waiting for the busy timeout, while
        another connection is switching the same new file: workers starting together serialise the whole
        set-up on an advisory ``flock`` of the database file (independent of SQLite's own locks), waited for
        up to the store timeout.

        The ``flock`` is taken on a sibling ``.lock`` file, never on the database file: closing any descriptor of
        the database file drops every POSIX lock this process holds on it, SQLite's shared lock included, and
        another process closing its last connection would then believe itself alone, checkpoint and *delete* the
        WAL file that this process still writes to (its writes were lost: a replica started next to a running one
        did exactly that). The database file is created here only when it does not exist yet (no connection of
        this process can be open on a file that did not exist)."""
        try:
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
            fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise StoreUnavailable(f"the SQLite database file cannot be opened ({type(exc).__name__})") from None
        try:
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StoreUnavailable(_CAUSES["SQLITE_BUSY"] + " (set-up)") from None
                    time.sleep(0.01)
            return self._run(self._migrate, lock=True, wal=True)
        finally:
            os.close(fd)  # releases the flock

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            # check_same_thread=False only so that close() may close every thread's connection; each thread
            # still uses its own
            conn = sqlite3.connect(self._uri, uri=True, timeout=self.timeout, isolation_level=None,
                                   check_same_thread=False)
            self._local.conn, self._local.pid = conn, os.getpid()
            with self._open_lock:
                if self._open_pid != os.getpid():  # inherited across fork: not ours to close
                    self._open, self._open_pid = set(), os.getpid()
                self._open.add(conn)
        return conn

    def _drop(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            with self._open_lock:
                self._open.discard(conn)
            conn.close()

    def _run(self, fn: Callable[[Cursor], T], *, durable: bool = False, lock: bool = False,
             wal: bool = False, read_only: bool = False) -> T:
        try:
            conn = self._connection()
            if wal:
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            cursor = conn.cursor()
            cursor.execute("BEGIN" if read_only else "BEGIN IMMEDIATE")  # WAL: a reader never waits for the writer
            try:
                result = fn(Cursor(cursor, "sqlite"))
                cursor.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result
        except sqlite3.Error as exc:
            self._drop()
            raise StoreUnavailable(cause_of(exc)) from None

    def close(self) -> None:
        """Close every thread's connection opened by this process (the files, -wal and -shm)."""
        self._drop()
        with self._open_lock:
            conns = self._open if self._open_pid == os.getpid() else set()
            self._open = set()
        for conn in conns:
            conn.close()
