"""Another process opening and closing the SQLite store never deletes the WAL file a running process writes to.

Before the fix, the set-up's ``flock`` descriptor was the database file itself; closing it dropped the process's
POSIX locks on the file, SQLite's shared lock included. A second process (a replica starting, ``nms-cds report``)
that then closed its last connection believed itself alone, checkpointed and deleted the WAL: what the first
process wrote next went to an unlinked file and was lost (a third reader saw no feedback at all).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from cds_service.store import FeedbackRecord
from cds_service.store.sqlite import FILENAME, SqliteStore

OPEN_AND_CLOSE = "import sys; from pathlib import Path; from cds_service.store.sqlite import SqliteStore; " \
                 "SqliteStore.in_dir(Path(sys.argv[1])).close()"


def test_a_second_process_closing_its_store_keeps_the_first_ones_writes(tmp_path: Path) -> None:
    first = SqliteStore.in_dir(tmp_path)
    try:
        first.add_feedback([FeedbackRecord("svc", "card-1", "accepted", "t1", received_at=1.0)])
        subprocess.run([sys.executable, "-c", OPEN_AND_CLOSE, str(tmp_path)], check=True, timeout=60)
        assert (tmp_path / (FILENAME + "-wal")).exists()
        first.add_feedback([FeedbackRecord("svc", "card-2", "accepted", "t2", received_at=2.0)])
        reader = sqlite3.connect(tmp_path / FILENAME)
        try:
            rows = reader.execute("SELECT card_uuid FROM feedback ORDER BY id").fetchall()
        finally:
            reader.close()
        assert rows == [("card-1",), ("card-2",)]
    finally:
        first.close()


def test_the_quiet_period_look_up_does_not_wait_behind_a_writer(tmp_path: Path) -> None:
    """The look-up is on the hook's path: while another connection holds the write lock it answers at once
    (WAL readers never wait), instead of queueing for up to the store timeout."""
    store = SqliteStore.in_dir(tmp_path, timeout=5.0)
    writer = sqlite3.connect(tmp_path / FILENAME, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        assert store.answered("quiet:nobody", since=0) == []
        assert time.monotonic() - started < 1.0
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        store.close()
