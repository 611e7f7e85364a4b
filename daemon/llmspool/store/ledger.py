"""SQL of the money rows (ledger entries and reservations) and the ledger's own connection.

The ledger actor is the only writer of these tables, through ``LedgerConnection``: one
synchronous connection to the store. On SQLite a short transaction (a group commit of
entries and reservations) runs right on the event loop, which is cheaper than a hop to a
thread (~80 µs against ~330 µs here), and falls back to a worker thread when another
connection holds SQLite's write lock, so the event loop never waits on a lock. Group commits
run on the loop too; big transactions (a batch's results, the reconciliation at start) run
in the thread: the loop serves calls meanwhile. On PostgreSQL every transaction runs in the
thread, since each statement is a round trip to the server.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio

from llmspool.core.calls import Endpoint, Tier, Usage
from llmspool.store.backend import DATABASE_NAME, Backend, StoreLocation
from llmspool.store.connect import connect
from llmspool.store.connections import AsyncConnection, Connection, PgConnection, is_sqlite
from llmspool.store.jobs import COMPLETE_FINISHED_JOBS
from llmspool.store.records import Caller, JobResult, Settled
from llmspool.store.reservation_journal import JournalMark, ReservationJournal, journal_path
from llmspool.store.response_ids import index_all
from llmspool.store.schema import migrate_store
from llmspool.store.wal_checkpoints import CHECKPOINT_SECONDS, WalCheckpoints

_T = TypeVar("_T")
_TIERS = {tier.value for tier in Tier}
LOCK_WAIT_MS = 30_000

INSERT_ENTRY = """
INSERT INTO ledger_entries (
    request_id, day, started_at, finished_at, provider, model, endpoint, tier, operation, uid,
    status, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, usage_estimated,
    cost_picodollars, standard_cost_picodollars, session, flag, saving_source,
    cache_write_tokens, price_version, deadline_window, late, response_id, daemon
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO NOTHING
"""


def utc_day(unix_seconds: float) -> str:
    return _day_text(int(unix_seconds // 86400))


@functools.lru_cache(maxsize=8)
def _day_text(day_number: int) -> str:
    """Formatting a date costs ~1 µs; a batch of 50,000 entries shares one or two days."""
    return time.strftime("%Y-%m-%d", time.gmtime(day_number * 86400))


def entry_row(entry: Settled, daemon: str | None = None) -> tuple[Any, ...]:
    """The row of ``entry`` for ``INSERT_ENTRY``; ``daemon``: the daemon that made the call."""
    usage = entry.usage
    return (
        entry.request_id,
        utc_day(entry.finished_at),
        entry.started_at,
        entry.finished_at,
        entry.provider,
        entry.model,
        entry.endpoint.value,
        entry.tier.value,
        entry.operation,
        entry.caller.uid,
        entry.status,
        usage.input_tokens,
        usage.cached_input_tokens,
        usage.output_tokens,
        usage.reasoning_tokens,
        int(usage.estimated),
        entry.cost_picodollars,
        entry.standard_cost_picodollars,
        entry.session,
        entry.flag,
        entry.saving_source,
        usage.cache_write_tokens,
        entry.price_version,
        entry.deadline_window,
        int(entry.late),
        entry.response_id,
        daemon,
    )


class LedgerConnection:
    """The ledger's connection to the store: the one writer of money rows.

    ``run`` runs ``function(connection, *args)`` (which opens and ends its own transaction):
    on SQLite right on the event loop if the write lock is free at once, else in a worker
    thread that waits for it; on PostgreSQL in the thread. ``run_in_thread`` always uses the
    thread. One call at a time: the ledger awaits each before the next.

    ``checkpoints``: on SQLite opened with ``open``, the checkpoints of the write-ahead log,
    which this connection leaves to a worker thread (``store.wal_checkpoints``); the ledger
    runs them. ``journal``: there too, the reservations' journal, which makes an admission
    durable without a commit (``store.reservation_journal``); the ledger starts it.
    """

    def __init__(self, connection: Connection, checkpoints: WalCheckpoints | None = None,
                 journal: ReservationJournal | None = None) -> None:
        self.connection = connection
        self.checkpoints = checkpoints
        self.journal = journal
        self._on_loop = isinstance(connection, sqlite3.Connection)
        # PostgreSQL: a store several daemons may share, whose caps hold for all of them.
        self.shared = not self._on_loop

    @classmethod
    def open(cls, location: StoreLocation,
             sync_interval: float = CHECKPOINT_SECONDS) -> LedgerConnection:
        """``sync_interval``: on SQLite, the longest a commit waits for its checkpoint."""
        # SQLite: no busy wait on the event loop; a locked database moves to the thread.
        connection = connect(location, lock_wait_ms=0)
        if location.backend is not Backend.SQLITE:
            return cls(connection)
        # No checkpoint (and its fsyncs) inside a commit on the event loop.
        connection.execute("PRAGMA wal_autocheckpoint=0")
        return cls(connection, WalCheckpoints(location, before=index_all, seconds=sync_interval),
                   ReservationJournal(journal_path(location.path)))

    async def run(self, function: Callable[..., _T], *args: Any) -> _T:
        if not self._on_loop:
            return await self.run_in_thread(function, *args)
        try:
            result = function(self.connection, *args)
            if self.checkpoints is not None:
                self.checkpoints.due()
            return result
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            # Another connection holds the write lock: wait for it in the thread instead.
        if self.connection.in_transaction:
            self.connection.execute("ROLLBACK")
        return await self.run_in_thread(function, *args)

    async def run_in_thread(self, function: Callable[..., _T], *args: Any) -> _T:
        def waiting() -> _T:
            connection = self.connection
            if not self._on_loop:
                return function(connection, *args)
            connection.execute(f"PRAGMA busy_timeout={LOCK_WAIT_MS}")
            try:
                return function(connection, *args)
            finally:
                connection.execute("PRAGMA busy_timeout=0")

        # Shielded: a transaction that has begun always ends, even while the daemon stops.
        with anyio.CancelScope(shield=True):
            result = await anyio.to_thread.run_sync(waiting)
        if self.checkpoints is not None:
            self.checkpoints.due()
        return result

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
        self.connection.close()


async def open_ledger_connection(state_dir: Path) -> LedgerConnection:
    """The ledger's connection to the SQLite store in ``state_dir``, created and migrated."""
    location = StoreLocation(Backend.SQLITE, str(state_dir / DATABASE_NAME))
    await migrate_store(location)
    return LedgerConnection.open(location)


_PUT_BACK = """
INSERT INTO reservations (request_id, kind, reserved_at, provider, model, endpoint,
    tier, operation, uid, session, estimate_picodollars, line_id, daemon)
SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?
WHERE NOT EXISTS (SELECT 1 FROM ledger_entries WHERE request_id = ?1)  -- ?1: request_id
ON CONFLICT (request_id) DO NOTHING
"""


def recover_journal(connection: sqlite3.Connection, journal: ReservationJournal) -> int:
    """At start-up, before ``reconcile``: the reservations' journal's rows past the committed
    mark go into ``reservations`` (those whose entry was stored do not), in one transaction;
    then the journal begins a new generation. Returns how many rows were put back."""
    generation, covered = connection.execute(
        "SELECT generation, covered FROM reservation_journal").fetchone()
    rows, found = journal.uncovered((int(generation), int(covered)))
    put_back = 0
    if rows:
        put_back = _transaction(connection,
                                lambda: connection.executemany(_PUT_BACK, rows).rowcount)
    journal.start(max(int(generation), found) + 1)
    return put_back


def begin_money(connection: Connection) -> None:
    """Begin a transaction that writes money (entries, reservations). IMMEDIATE: take
    SQLite's write lock first, so a reading statement inside cannot fail later with "database
    is locked" because another connection committed in between. On PostgreSQL, the fleet's
    money lock: one money transaction of any daemon at a time, so what one reads to decide
    (usage, entries already stored) cannot change before it commits."""
    connection.execute("BEGIN IMMEDIATE")
    if not is_sqlite(connection):
        connection.execute("SELECT llmspool_money_lock()")


def _transaction(connection: Connection, body: Callable[[], _T]) -> _T:
    begin_money(connection)
    try:
        result = body()
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
    return result


def _pipelined_transaction(connection: Connection, body: Callable[[], _T]) -> _T:
    """``_transaction`` for a body that reads nothing after it writes (no row counts): on
    PostgreSQL its statements go in a pipeline, so the begin, the lock and the reads are one
    round trip and the writes with the commit another (a call's admission: ~7 round trips
    down to 2). On SQLite, the same as ``_transaction``."""
    if is_sqlite(connection):
        return _transaction(connection, body)
    assert isinstance(connection, PgConnection)
    try:
        with connection.raw.pipeline():
            begin_money(connection)
            result = body()
            connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return result


INSERT_RESERVATION = """
INSERT INTO reservations (request_id, kind, reserved_at, provider, model, endpoint,
    tier, operation, uid, session, estimate_picodollars, line_id, daemon)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (request_id) DO UPDATE SET kind = excluded.kind, reserved_at = excluded.reserved_at,
    provider = excluded.provider, model = excluded.model, endpoint = excluded.endpoint,
    tier = excluded.tier, operation = excluded.operation, uid = excluded.uid,
    session = excluded.session, estimate_picodollars = excluded.estimate_picodollars,
    line_id = excluded.line_id, daemon = excluded.daemon
"""


def line_key(line_id: int) -> str:
    """The reservation id of batch line ``line_id``."""
    return f"line:{line_id}"


def write_group(connection: Connection, reservations: Sequence[tuple[Any, ...]],
                entries: Sequence[Settled], ended: Sequence[str],
                daemon: str | None = None, journal_mark: JournalMark | None = None) -> None:
    """One group commit: new reservations, new entries (a repeated request id is ignored),
    and the reservations that ``entries`` settle or that ended without a bill.
    ``journal_mark``: how far the reservations' journal is covered by this commit (SQLite)."""
    _pipelined_transaction(
        connection, lambda: _write(connection, reservations, entries, ended, daemon,
                                   journal_mark))


def _write(connection: Connection, reservations: Sequence[tuple[Any, ...]],
           entries: Sequence[Settled], ended: Sequence[str], daemon: str | None,
           journal_mark: JournalMark | None) -> None:
    if journal_mark is not None:
        connection.execute("UPDATE reservation_journal SET generation = ?, covered = ?",
                           journal_mark)
    if reservations:
        connection.executemany(INSERT_RESERVATION, reservations)
    if entries:
        connection.executemany(INSERT_ENTRY, [entry_row(e, daemon) for e in entries])
    gone = [(e.request_id,) for e in entries] + [(key,) for key in ended]
    if gone:
        connection.executemany("DELETE FROM reservations WHERE request_id = ?", gone)


UsageKey = tuple[str, str, str]  # (period, kind, key) of a row of budget_usage


@dataclass(frozen=True, slots=True)
class CapCheck:
    """One cap an admission is checked against in a shared store."""

    period: str  # the UTC day, or '' for a session
    kind: str
    key: str
    limit: int  # picodollars
    name: str  # how an operator names it: "[budgets] daily_usd"

    @property
    def usage_key(self) -> UsageKey:
        return (self.period, self.kind, self.key)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A call (or batch line) asking to be admitted against the fleet's caps."""

    reservation: tuple[Any, ...]  # its row for INSERT_RESERVATION
    estimate: int
    caps: tuple[CapCheck, ...]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a candidate was refused: the cap, and what was spent and reserved in it."""

    cap: CapCheck
    spent: int
    reserved: int


def admit_shared(connection: Connection, candidates: Sequence[Candidate],
                 entries: Sequence[Settled] = (), ended: Sequence[str] = (),
                 daemon: str | None = None
                 ) -> tuple[list[Refusal | None], dict[UsageKey, tuple[int, int]]]:
    """Decide ``candidates`` against the fleet's usage and commit the admitted ones'
    reservations with ``entries`` and ``ended`` (``write_group``), in one transaction under
    the money lock: no other daemon decides or bills between the read and the commit, so
    caps hold across the fleet. Returns a refusal or None per candidate, and the usage read
    (with what this group reserved added)."""
    def body() -> tuple[list[Refusal | None], dict[UsageKey, tuple[int, int]]]:
        usage = _usage(connection, {cap.usage_key for c in candidates for cap in c.caps})
        verdicts: list[Refusal | None] = []
        admitted: list[tuple[Any, ...]] = []
        for candidate in candidates:
            verdict = None
            for cap in candidate.caps:
                spent, reserved = usage.get(cap.usage_key, (0, 0))
                if spent + reserved + candidate.estimate > cap.limit:
                    verdict = Refusal(cap, spent, reserved)
                    break
            if verdict is None:
                for cap in candidate.caps:
                    spent, reserved = usage.get(cap.usage_key, (0, 0))
                    usage[cap.usage_key] = (spent, reserved + candidate.estimate)
                admitted.append(candidate.reservation)
            verdicts.append(verdict)
        _write(connection, admitted, entries, ended, daemon, None)
        return verdicts, usage

    return _pipelined_transaction(connection, body)


def usage_on(connection: Connection, day: str) -> dict[UsageKey, tuple[int, int]]:
    """The fleet's spent and reserved by scope on ``day`` (a shared store's budget_usage)."""
    rows = connection.execute("SELECT period, kind, key, spent, reserved FROM budget_usage "
                              "WHERE period = ?", (day,)).fetchall()
    return {(period, kind, key): (int(spent), int(reserved))
            for period, kind, key, spent, reserved in rows}


def _usage(connection: Connection, keys: set[UsageKey]) -> dict[UsageKey, tuple[int, int]]:
    found: dict[UsageKey, tuple[int, int]] = {}
    wanted = sorted(keys)
    for start in range(0, len(wanted), 300):
        chunk = wanted[start:start + 300]
        rows = connection.execute(
            "SELECT period, kind, key, spent, reserved FROM budget_usage WHERE "
            "(period, kind, key) IN (VALUES " + ", ".join(["(?, ?, ?)"] * len(chunk)) + ")",
            [value for key in chunk for value in key]).fetchall()
        for period, kind, key, spent, reserved in rows:
            found[(period, kind, key)] = (int(spent), int(reserved))
    return found


def store_job_results(connection: Connection, results: Sequence[JobResult],
                      entries: Sequence[Settled], now: float,
                      reservations: Sequence[tuple[Any, ...]] = (),
                      daemon: str | None = None) -> tuple[list[int], list[Settled]]:
    """Store job results with the ledger entries of their calls, in one transaction; returns
    the ids of the results stored and the entries that were new. A result stored already
    (the call was repeated) is not stored again; its call's entry is still written, because
    the provider billed that call too."""
    def body() -> tuple[list[int], list[Settled]]:
        if reservations:
            connection.executemany(INSERT_RESERVATION, reservations)
        new = _new_entries(connection, entries)
        connection.executemany(INSERT_ENTRY, [entry_row(e, daemon) for e in new])
        connection.executemany("DELETE FROM reservations WHERE request_id = ?",
                               [(e.request_id,) for e in entries])
        stored = []
        for result in results:
            cursor = connection.execute(
                "UPDATE job_requests SET state = ?, tier = ?, cost_picodollars = ?, "
                "standard_cost_picodollars = ?, result = ?, attempts = ?, finished_at = ? "
                "WHERE id = ? AND state = 'queued'",
                (result.state, result.tier, result.cost_picodollars,
                 result.standard_cost_picodollars, result.result, result.attempts, now,
                 result.request_id),
            )
            if cursor.rowcount == 1:
                stored.append(result.request_id)
        job_ids = sorted({r.job_id for r in results})
        if job_ids:
            marks = ",".join("?" * len(job_ids))
            connection.execute(COMPLETE_FINISHED_JOBS.format(only=f"AND id IN ({marks})"),
                               (now, *job_ids))
        return stored, new

    return _transaction(connection, body)


def _new_entries(connection: Connection, entries: Sequence[Settled]) -> list[Settled]:
    known: set[str] = set()
    ids = [e.request_id for e in entries]
    for start in range(0, len(ids), 900):
        chunk = ids[start:start + 900]
        known.update(row[0] for row in connection.execute(
            f"SELECT request_id FROM ledger_entries WHERE request_id IN "
            f"({','.join('?' * len(chunk))})", chunk))
    fresh: dict[str, Settled] = {}
    for entry in entries:
        if entry.request_id not in known:
            fresh.setdefault(entry.request_id, entry)
    return list(fresh.values())


@dataclass(frozen=True, slots=True)
class HeldReservation:
    """A reservation still held at start-up (a batch line's), as the caps count it."""

    request_id: str
    provider: str
    operation: str | None
    uid: int | None
    session: str | None
    estimate_picodollars: int


def reconcile(connection: Connection, now: float, daemons: Sequence[str] | None = None
              ) -> tuple[list[Settled], list[HeldReservation]]:
    """After a crash: every call reservation left becomes an ``unknown_outcome`` entry at its
    reserved cost (nobody can know whether the provider answered, and so billed, the call);
    a batch line's reservation is kept while a batch carries the line, else dropped. Returns
    the new entries and the reservations kept. ``daemons``: only the reservations these
    daemons held (in a shared store, the others' calls may still be running); None: all."""
    return _transaction(connection, lambda: _reconcile(connection, now, daemons))


def _reconcile(connection: Connection, now: float, daemons: Sequence[str] | None
               ) -> tuple[list[Settled], list[HeldReservation]]:
    query = ("SELECT request_id, kind, reserved_at, provider, model, endpoint, tier, "
             "operation, uid, session, estimate_picodollars, line_id, daemon "
             "FROM reservations")
    if daemons is not None:
        query += f" WHERE daemon IN ({', '.join('?' * len(daemons))})" if daemons else \
            " WHERE FALSE"
    rows = connection.execute(query, list(daemons or ())).fetchall()
    unknown: list[tuple[Settled, str | None]] = []
    kept: list[HeldReservation] = []
    dropped: list[tuple[str]] = []
    for (request_id, kind, reserved_at, provider, model, endpoint, tier, operation, uid,
         session, estimate, line_id, daemon) in rows:
        if kind == "line":
            carried = connection.execute(
                "SELECT 1 FROM job_requests WHERE id = ? AND state = 'queued' "
                "AND batch_id IS NOT NULL", (line_id,)).fetchone()
            if carried:
                kept.append(HeldReservation(request_id, provider, operation, uid, session,
                                            int(estimate)))
            else:
                dropped.append((request_id,))
            continue
        unknown.append((Settled(
            request_id=request_id, provider=provider, model=model,
            endpoint=Endpoint(endpoint), tier=Tier(tier) if tier in _TIERS else
            Tier.STANDARD, usage=Usage(estimated=True), cost_picodollars=int(estimate),
            standard_cost_picodollars=int(estimate), caller=Caller(uid=uid),
            operation=operation, status=0, started_at=float(reserved_at), finished_at=now,
            session=session, flag="unknown_outcome",
        ), daemon))
        dropped.append((request_id,))
    connection.executemany(INSERT_ENTRY, [entry_row(e, daemon) for e, daemon in unknown])
    connection.executemany("DELETE FROM reservations WHERE request_id = ?", dropped)
    return [entry for entry, _daemon in unknown], kept


@dataclass(frozen=True, slots=True)
class TakenOver:
    """What a take-over did: the daemons taken over, their calls billed as unknown outcomes,
    and their deferred work, this daemon's now (jobs in progress, open batches)."""

    daemons: list[str]
    unknown: list[Settled]
    job_ids: list[str]
    batch_ids: list[int]


def take_over(connection: Connection, now: float, names: Sequence[str], taker: str
              ) -> TakenOver:
    """Take over the daemons ``names`` whose lease is still over when checked under the money
    lock (one that renewed meanwhile is spared), in one transaction: their call reservations
    become ``unknown_outcome`` entries, their rows leave ``daemons``, their jobs in progress,
    open batches and batch lines' reservations become ``taker``'s, the requests they had
    claimed are offered to the fleet again, and their flights of the fleet's cache end."""
    def body() -> TakenOver:
        marks = ", ".join("?" * len(names))
        gone = [row[0] for row in connection.execute(
            f"DELETE FROM daemons WHERE name IN ({marks}) AND lease_until < "
            "EXTRACT(EPOCH FROM clock_timestamp()) RETURNING name", list(names)).fetchall()]
        if not gone:
            return TakenOver([], [], [], [])
        unknown, _kept = _reconcile(connection, now, gone)
        theirs = ", ".join("?" * len(gone))
        connection.execute(f"UPDATE reservations SET daemon = ? WHERE daemon IN ({theirs})",
                           [taker, *gone])
        jobs = [row[0] for row in connection.execute(
            f"UPDATE jobs SET daemon = ? WHERE daemon IN ({theirs}) AND status = 'in_progress' "
            "RETURNING id", [taker, *gone]).fetchall()]
        batches = [int(row[0]) for row in connection.execute(
            f"UPDATE batches SET daemon = ? WHERE daemon IN ({theirs}) AND state != 'finished' "
            "RETURNING id", [taker, *gone]).fetchall()]
        # The requests they claimed are offered again: the taker claims back those of the
        # jobs it takes when it routes them, any daemon may claim the others'.
        connection.execute(f"UPDATE job_requests SET claimed_by = NULL WHERE claimed_by IN "
                           f"({theirs}) AND state = 'queued'", list(gone))
        # Their calls in flight for the fleet's cache end: those who wait for them call.
        connection.execute(f"DELETE FROM cache_flights WHERE daemon IN ({theirs})", list(gone))
        return TakenOver(gone, unknown, sorted(jobs), sorted(batches))

    if not names:
        return TakenOver([], [], [], [])
    return _transaction(connection, body)


def spend_today_by_scope(
    connection: Connection, day: str
) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    """(cost, standard cost, calls, unpriced calls) on ``day`` in total and per operation,
    calling user and provider, as the ledger's budgets key them; read from the rollup."""
    rows = connection.execute(
        "SELECT operation, uid, provider, SUM(cost_picodollars), "
        "SUM(standard_cost_picodollars), SUM(calls), SUM(unpriced_calls) "
        "FROM ledger_rollup WHERE day = ? GROUP BY operation, uid, provider",
        (day,),
    ).fetchall()
    totals: dict[tuple[str, str], list[int]] = {}
    for operation, uid, provider, cost, standard, calls, unpriced in rows:
        user = "None" if uid == -1 else str(uid)
        for scope in (("day", ""), ("operation", operation), ("user", user),
                      ("provider", provider)):
            sums = totals.setdefault(scope, [0, 0, 0, 0])
            for index, value in enumerate((cost, standard, calls, unpriced)):
                sums[index] += int(value)
    return {scope: (s[0], s[1], s[2], s[3]) for scope, s in totals.items()}


def unknown_outcomes_on(connection: Connection, day: str) -> tuple[int, int]:
    """(calls, picodollars) recorded as unknown outcome on ``day``."""
    row = connection.execute(
        "SELECT COUNT(*), COALESCE(SUM(cost_picodollars), 0) FROM ledger_entries "
        "WHERE flag = 'unknown_outcome' AND day = ?", (day,)).fetchone()
    return int(row[0]), int(row[1])


def spend_of_session(connection: Connection, session: str) -> int:
    """Picodollars spent so far in the client-chosen ``session``."""
    row = connection.execute(
        "SELECT COALESCE(SUM(cost_picodollars), 0) FROM ledger_entries WHERE session = ?",
        (session,),
    ).fetchone()
    return int(row[0]) if row else 0


async def recent_latencies(
    connection: AsyncConnection, limit: int = 20_000
) -> list[tuple[tuple[str, str, Tier], float]]:
    """((provider, model, tier), seconds) of recent successful calls, oldest first: the
    planner's memory across restarts."""
    rows = await connection.execute_fetchall(
        "SELECT provider, model, tier, finished_at - started_at FROM ("
        "SELECT id, provider, model, tier, started_at, finished_at FROM ledger_entries "
        "WHERE status = 200 ORDER BY id DESC LIMIT ?) AS recent ORDER BY id",
        (limit,),
    )
    return [((p, m, Tier(t)), float(s)) for p, m, t, s in rows if t in _TIERS]


def recent_entries(connection: Connection, limit: int, everyone: bool = True,
                   uid: int | None = None) -> list[dict[str, Any]]:
    """The last ``limit`` entries, newest first, as JSON-ready dicts: of every user, or only
    of ``uid`` (None: calls of unknown origin)."""
    if everyone:
        cursor = connection.execute("SELECT * FROM ledger_entries ORDER BY id DESC LIMIT ?",
                                    (limit,))
    else:
        cursor = connection.execute(
            "SELECT * FROM ledger_entries WHERE uid IS NOT DISTINCT FROM ? ORDER BY id DESC "
            "LIMIT ?",
            (uid, limit))
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
