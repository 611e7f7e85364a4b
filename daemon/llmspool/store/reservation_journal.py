"""The reservations' journal: a call's reservation made durable with one write, not a commit.

A call's reservation must be durable before the call is sent: after a crash, the calls that may
have been in flight are billed at their reservations. On SQLite the ledger used to commit each
admission's reservations before admitting: at concurrency 1, where nothing shares the commit,
that was ~110 µs on the event loop and a loop turn of waiting for company per call, an eighth
of all the daemon added to a call. Now the ledger appends the admitted calls' reservation rows
here, with one ``write`` for all those admitted together, and admits them at once. The
durability is the commit's: with ``synchronous=NORMAL`` a commit is a write into the
write-ahead log, which a crash of the daemon cannot undo and a crash of the machine can; the
journal's write is the same.

The ledger's next group commit (``actors.accounting.commits``, within ``COMMIT_INTERVAL``)
writes the calls' entries and ends, inserts into ``reservations`` the rows of the calls still
in flight, and records how far the journal is covered (``reservation_journal``: generation,
byte offset) in the same transaction. So every row before the mark is in ``reservations``,
settled or ended, and a row past it is none of these. (The ledger journals nothing while a
commit runs; were it to, the rows past the commit's mark would simply wait for the next.) At
start-up ``store.ledger.recover_journal`` puts the rows past the mark into ``reservations``
(unless their entry was stored), where ``reconcile`` bills them as unknown outcomes as it bills
any reservation a crash left, and begins a new generation.

The file (``llmspool.sqlite3-reservations``): a header line naming its generation, then one
JSON array per reservation row and line. A new generation (a new file renamed over the old)
begins after a commit once the file passes ``ROTATE_BYTES``, holding the rows appended after
that commit's mark. PostgreSQL has no journal: there admissions are decided in the transaction
that commits their reservations (``store.ledger.admit_shared``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

__all__ = ["ROTATE_BYTES", "JournalMark", "ReservationJournal", "journal_path"]

log = logging.getLogger(__name__)

HEADER = b"llmspool reservations journal, generation "
ROTATE_BYTES = 1 << 20
RESERVATION_COLUMNS = 13  # the row ``store.ledger.INSERT_RESERVATION`` takes

JournalMark = tuple[int, int]  # (generation, bytes of the file covered)

def journal_path(database: Path) -> Path:
    """The journal of the SQLite store in ``database``: beside it, as its ``-wal`` is."""
    return database.with_name(database.name + "-reservations")


class ReservationJournal:
    """The append-only file of reservation rows not yet covered by a commit (the ledger's)."""

    def __init__(self, path: Path, rotate_bytes: int = ROTATE_BYTES) -> None:
        self.path = path
        self._rotate_bytes = rotate_bytes
        self.generation = 0
        self.size = 0
        self._fd: int | None = None

    def start(self, generation: int, rows: bytes = b"") -> None:
        """Begin ``generation``: a file of its header and ``rows`` in place of the old one."""
        data = HEADER + str(generation).encode() + b"\n" + rows
        fresh = self.path.with_name(self.path.name + ".new")
        fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        try:
            _write_all(fd, data)
            os.replace(fresh, self.path)
        except BaseException:
            os.close(fd)
            raise
        self.close()
        self._fd, self.generation, self.size = fd, generation, len(data)

    def append(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Make ``rows`` durable against a crash of the daemon: one write."""
        if self._fd is None:
            raise RuntimeError("the reservations' journal was not started")
        data = b"".join(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE) for row in rows)
        _write_all(self._fd, data)
        self.size += len(data)

    @property
    def mark(self) -> JournalMark:
        """Where the journal ends now: a commit that records it covers every row in it."""
        return self.generation, self.size

    def committed(self, mark: JournalMark) -> None:
        """A commit recorded ``mark``: once the file is large, begin the next generation with
        the rows appended after the mark (while the commit ran), the only ones still needed.
        A crash before the new file replaces the old leaves the old and the mark; after, the
        new one, whose generation no commit has recorded, so all of it is read."""
        generation, covered = mark
        if generation != self.generation or self.size <= self._rotate_bytes \
                or self._fd is None:
            return
        after = os.pread(self._fd, self.size - covered, covered) if self.size > covered else b""
        self.start(generation + 1, after)

    def uncovered(self, mark: JournalMark) -> tuple[list[tuple[Any, ...]], int]:
        """At start-up: the rows in the file past the committed ``mark`` (the whole file when
        a new generation began after it), and the file's generation."""
        return _uncovered(self.path, *mark)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _uncovered(path: Path, generation: int, covered: int
               ) -> tuple[list[tuple[Any, ...]], int]:
    """The rows of the journal at ``path`` past the mark (``generation``, ``covered``), and
    the file's generation."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], generation
    first = data.partition(b"\n")[0]
    number = first.removeprefix(HEADER)
    if first.startswith(HEADER) and number.isdigit():
        found = int(number)
        start = len(first) + 1
        if found == generation:  # else a new generation began after the last commit
            start = max(start, covered)
    else:
        log.warning("%s does not begin with a journal's header; every line of it is read", path)
        found, start = generation, 0
    rows: list[tuple[Any, ...]] = []
    for line in data[start:].splitlines():
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            row = None
        if isinstance(row, list) and len(row) == RESERVATION_COLUMNS and \
                isinstance(row[0], str):
            rows.append(tuple(row))
            continue
        # Only a crash of the machine mid-write cuts a line, and what it held was never
        # admitted (the write had not returned): passing over it loses nothing.
        log.warning("%s: a line past the last commit is not a reservation row (%r); passed "
                    "over", path, line[:80])
    return rows, found


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
