"""The embedded store: one SQLite file under ``NMS_CDS_DATA_DIR``, safe for several gunicorn workers.

Each thread keeps its own connection (opened lazily, never inherited across ``fork``, dropped after
an error), in WAL mode so readers never block the writer, and takes the write lock up front
(``BEGIN IMMEDIATE``) so that concurrent writers queue for up to ``NMS_CDS_STORE_TIMEOUT_SECONDS``
instead of failing half-way. Feedback commits with ``synchronous=FULL`` (on disk before the 200);
audit and replay entries with ``NORMAL`` (safe against a killed process, not against power loss).

Connections open the file in ``mode=rw``: a file that disappeared is an error (503), never a
silently recreated empty database. An open connection would go on writing into a file deleted or replaced
under it (acknowledged data lost with the unlinked inode): every transaction first compares the path's
device and inode with the file's at start (one ``stat``) and, once they differ, answers 503 until restarted.
The file, its -wal and -shm are ``0600`` (SQLite gives them the database file's mode) in a ``0700``
directory. (A connection per operation would be simpler but costs about
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
from cds_service.store.keys import private_dir, tighten
from cds_service.store.sql import Cursor, SqlStore

T = TypeVar("T")
FILENAME = "nms-cds.sqlite3"
VANISHED = "the SQLite database file was deleted or replaced while in use; restart the service"

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

    def __init__(self, path: Path, *, timeout: float = 5.0, max_per_issuer: int = 100_000,
                 feedback_per_hour: int = 0, feedback_total: int = 0) -> None:
        super().__init__(max_per_issuer=max_per_issuer, feedback_per_hour=feedback_per_hour,
                         feedback_total=feedback_total)
        self.path = path.resolve()
        self.timeout = timeout
        self._uri = self.path.as_uri() + "?mode=rw"
        self._local = threading.local()
        self._open: set[sqlite3.Connection] = set()  # every thread's connection, so that close() closes them all
        self._open_lock = threading.Lock()
        self._open_pid = os.getpid()
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened at start
        self._vanished = False
        self.migrated = self._setup()

    @classmethod
    def in_dir(cls, data_dir: Path, **kwargs: float | int) -> SqliteStore:
        private_dir(data_dir)
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
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreUnavailable(f"the SQLite database file cannot be opened ({type(exc).__name__})") from None
        try:
            st = os.stat(self.path)  # the database file's identity (fd is the sibling lock file)
            self._identity = (st.st_dev, st.st_ino)
            for path in (self.path, self.path.with_name(self.path.name + "-wal"),
                         self.path.with_name(self.path.name + "-shm")):
                tighten(path)  # files of earlier versions were 0644
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
        self._check_identity()
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

    def _check_identity(self) -> None:
        """StoreUnavailable (for good) once the path no longer names the file opened at start."""
        if not self._vanished and self._identity is not None:
            try:
                st = os.stat(self.path)
                self._vanished = (st.st_dev, st.st_ino) != self._identity
            except FileNotFoundError:
                self._vanished = True
            except OSError:
                return  # e.g. EACCES on a parent: SQLite's own error says what is wrong
        if self._vanished:
            raise StoreUnavailable(VANISHED)

    def close(self) -> None:
        """Close every thread's connection opened by this process (the files, -wal and -shm)."""
        self._drop()
        with self._open_lock:
            conns = self._open if self._open_pid == os.getpid() else set()
            self._open = set()
        for conn in conns:
            conn.close()
