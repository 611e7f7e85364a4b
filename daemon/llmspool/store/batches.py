"""SQL of batches, and of the bulk steps that move a batch's lines: synchronous, run in a thread.

The batch actors move tens of thousands of lines at a time (assign them to a batch, write the
input file, store the results and their ledger entries). Done through aiosqlite, every
statement is a hop to its thread and back; here each step is one function that the actor runs
with ``anyio.to_thread.run_sync`` on its own ``sqlite3`` connection, so a 100,000-line batch is
mapped in seconds.

Exactly once, across crashes: every write is guarded by the state it expects
(``WHERE batch_id = ? AND state = 'queued'``), a batch line's ledger entry has a deterministic
request id (``INSERT OR IGNORE``), and a batch is marked finished in the same transaction that
gives its unfinished lines back. Repeating any step after a crash changes nothing twice.
"""

from __future__ import annotations

import math
import os
import re
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import anyio
import orjson

from llmspool.core.batch_lines import BatchFiles
from llmspool.core.calls import Endpoint, Tier, Usage
from llmspool.core.states import BatchState, RequestState
from llmspool.core.wire import kept_json, usage_of
from llmspool.policy.billing import PriceBook, bill
from llmspool.store.jobs import COMPLETE_FINISHED_JOBS
from llmspool.store.ledger import INSERT_ENTRY, entry_row, line_key
from llmspool.store.records import (
    BatchCandidate,
    BatchChunk,
    BatchChunkStored,
    Caller,
    LineOutcome,
    NewEntry,
    RequeuedLine,
    Settled,
)

_T = TypeVar("_T")
CHUNK = 5000  # lines per transaction while storing results
_CUSTOM_ID = re.compile(rb"r(\d+)")
_UNCHARGED_CODES = frozenset({"batch_cancelled", "cancelled"})
_QUOTA = ("insufficient_quota", "credit_balance_exhausted", "billing_hard_limit_reached")


class ThreadedConnection:
    """One batch actor's ``sqlite3`` connection: each call to a function of this module runs
    in a worker thread, one at a time (the actor awaits each before the next)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    @classmethod
    async def open(cls, path: Path) -> ThreadedConnection:
        return cls(await anyio.to_thread.run_sync(connect, path))

    async def run(self, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``function(connection, *args, **kwargs)`` in a worker thread. Not cancellable
        once started: a transaction that has begun always ends."""
        return await anyio.to_thread.run_sync(
            lambda: function(self.connection, *args, **kwargs))

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.connection.close)


def connect(path: Path) -> sqlite3.Connection:
    """A connection for one batch actor, used from one worker thread at a time."""
    connection = sqlite3.connect(path, isolation_level=None, timeout=30.0,
                                 check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute("PRAGMA busy_timeout=30000")
    return connection


@dataclass(slots=True)
class BatchRow:
    """One batch as the store keeps it."""

    id: int
    intent: str
    provider: str
    endpoint: Endpoint
    model: str
    state: BatchState
    lines: int
    bytes: int
    tokens: int
    deadline_at: float
    created_at: float
    input_file_id: str | None = None
    remote_id: str | None = None
    remote_status: str | None = None
    completed: int = 0
    failed: int = 0
    submitted_at: float | None = None
    polled_at: float | None = None
    cancel_requested_at: float | None = None
    escalated_at: float | None = None
    traceparents: list[str] = field(default_factory=list)

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "id": self.remote_id,
            "intent": self.intent,
            "provider": self.provider,
            "endpoint": self.endpoint.value,
            "model": self.model,
            "state": self.state,
            "provider_status": self.remote_status,
            "lines": self.lines,
            "completed": self.completed,
            "failed": self.failed,
            "age_s": round(now - self.created_at, 1),
            "deadline_in_s": round(self.deadline_at - now, 1),
            "cancel_requested": self.cancel_requested_at is not None,
            "escalated": self.escalated_at is not None,
        }


_BATCH_COLUMNS = (
    "id, intent, provider, endpoint, model, state, lines, bytes, tokens, deadline_at, "
    "created_at, input_file_id, remote_id, remote_status, completed, failed, submitted_at, "
    "polled_at, cancel_requested_at, escalated_at"
)


def _batch(row: Sequence[Any]) -> BatchRow:
    values = list(row)
    values[3] = Endpoint(values[3])
    values[5] = BatchState(values[5])
    return BatchRow(*values)


@dataclass
class MapReport:
    """What storing a finished batch did."""

    outcomes: list[LineOutcome] = field(default_factory=list)
    requeued: list[RequeuedLine] = field(default_factory=list)
    billed: list[Settled] = field(default_factory=list)  # new ledger entries (not repeats)
    succeeded: int = 0
    failed: int = 0
    paid_twice: int = 0  # lines answered by the batch after their escalated copy was stored
    unreadable: int = 0
    cache_fills: list[NewEntry] = field(default_factory=list)  # answers the cache may keep


# --- building and opening -----------------------------------------------------------------


def open_batch(
    connection: sqlite3.Connection, intent: str, candidates: Sequence[BatchCandidate],
    traceparents: Iterable[str], now: float,
) -> BatchRow | None:
    """Record the intent to send ``candidates`` as one batch and assign them to it, in one
    transaction; None if none of them is still waiting (cancelled jobs)."""
    first = candidates[0]
    deadline = min(c.deadline_at for c in candidates)
    connection.execute("BEGIN IMMEDIATE")
    try:
        cursor = connection.execute(
            "INSERT INTO batches (intent, provider, endpoint, model, state, lines, bytes, "
            "tokens, deadline_at, created_at) VALUES (?, ?, ?, ?, 'intent', 0, 0, 0, ?, ?)",
            (intent, first.provider, first.endpoint.value, first.model, deadline, now),
        )
        batch_id = cursor.lastrowid
        connection.executemany(
            "UPDATE job_requests SET batch_id = ? WHERE id = ? AND state = 'queued' "
            "AND batch_id IS NULL",
            ((batch_id, c.request_id) for c in candidates),
        )
        lines, size = connection.execute(
            "SELECT COUNT(*), COALESCE(SUM(length(body)), 0) FROM job_requests "
            "WHERE batch_id = ?", (batch_id,),
        ).fetchone()
        if lines == 0:
            connection.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
            connection.execute("COMMIT")
            return None
        # A rough prompt-token count for the enqueued-token cap: ~4 bytes of JSON per token
        # overestimates (JSON punctuation), which errs on the side of not tripping the cap.
        tokens = size // 4
        connection.execute(
            "UPDATE batches SET lines = ?, bytes = ?, tokens = ? WHERE id = ?",
            (lines, size, tokens, batch_id),
        )
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
    assert batch_id is not None
    return BatchRow(batch_id, intent, first.provider, first.endpoint, first.model,
                    BatchState.INTENT, lines, size, tokens, deadline, now,
                    traceparents=list(traceparents))


def lines_to_reserve(connection: sqlite3.Connection, ids: Sequence[int]
                     ) -> list[tuple[int, str, str, bytes, str | None, int | None]]:
    """(id, job id, custom id, body, operation, uid) of the still-queued requests ``ids``, to
    reserve them against the caps before they are put into a batch."""
    found: list[tuple[int, str, str, bytes, str | None, int | None]] = []
    for start in range(0, len(ids), 900):
        chunk = list(ids[start:start + 900])
        found += connection.execute(
            "SELECT r.id, r.job_id, r.custom_id, r.body, j.operation, j.uid FROM job_requests r "
            f"JOIN jobs j ON j.id = r.job_id WHERE r.id IN ({','.join('?' * len(chunk))}) "
            "AND r.state = 'queued' AND r.batch_id IS NULL", chunk).fetchall()
    return found


def write_input_file(connection: sqlite3.Connection, batch: BatchRow, path: Path) -> int:
    """Write the batch's JSONL input file (atomically: whole or absent); returns its lines.

    Line order is by request id, and ``custom_id`` is ``r<request id>``, so a validation error
    naming a line number, and every output line, map back without a lookup table.
    """
    prefix = b'{"custom_id":"r'
    middle = b'","method":"POST","url":"' + batch.endpoint.value.encode() + b'","body":'
    part = path.with_name(path.name + ".part")
    lines = 0
    with part.open("wb") as out:
        rows = connection.execute(
            "SELECT id, body FROM job_requests WHERE batch_id = ? ORDER BY id", (batch.id,)
        )
        for request_id, body in rows:
            out.write(b"".join((prefix, str(request_id).encode(), middle, body, b"}\n")))
            lines += 1
        out.flush()
        os.fsync(out.fileno())
    os.replace(part, path)
    return lines


def mark_uploaded(connection: sqlite3.Connection, batch: BatchRow, file_id: str | None) -> None:
    """The input is upstream (``file_id`` None: it goes with the create call)."""
    connection.execute(
        "UPDATE batches SET state = 'uploaded', input_file_id = ? WHERE id = ?",
        (file_id, batch.id),
    )
    batch.state, batch.input_file_id = BatchState.UPLOADED, file_id


def mark_submitted(
    connection: sqlite3.Connection, batch: BatchRow, remote_id: str, status: str, now: float
) -> None:
    connection.execute(
        "UPDATE batches SET state = 'submitted', remote_id = ?, remote_status = ?, "
        "submitted_at = ? WHERE id = ?",
        (remote_id, status, now, batch.id),
    )
    batch.state, batch.remote_id, batch.remote_status = BatchState.SUBMITTED, remote_id, status
    batch.submitted_at = now


def record_poll(
    connection: sqlite3.Connection, batch: BatchRow, status: str, completed: int, failed: int,
    now: float,
) -> None:
    connection.execute(
        "UPDATE batches SET remote_status = ?, completed = ?, failed = ?, polled_at = ? "
        "WHERE id = ?",
        (status, completed, failed, now, batch.id),
    )
    batch.remote_status, batch.completed, batch.failed, batch.polled_at = (
        status, completed, failed, now)


def mark_cancel_requested(connection: sqlite3.Connection, batch: BatchRow, now: float) -> None:
    connection.execute("UPDATE batches SET cancel_requested_at = ? WHERE id = ?",
                       (now, batch.id))
    batch.cancel_requested_at = now


def open_batches(connection: sqlite3.Connection, batch_id: int | None = None) -> list[BatchRow]:
    """Every batch not finished (or just ``batch_id``, if it is not), oldest first, with the
    traceparents of the jobs it carries."""
    only = "" if batch_id is None else f"AND id = {int(batch_id)}"
    rows = connection.execute(
        f"SELECT {_BATCH_COLUMNS} FROM batches WHERE state != 'finished' {only} ORDER BY id"
    ).fetchall()
    batches = [_batch(row) for row in rows]
    for batch in batches:
        batch.traceparents = traceparents_of(connection, batch.id)
    return batches


def traceparents_of(connection: sqlite3.Connection, batch_id: int) -> list[str]:
    rows = connection.execute(
        "SELECT DISTINCT j.traceparent FROM job_requests r JOIN jobs j ON j.id = r.job_id "
        "WHERE r.batch_id = ? AND j.traceparent IS NOT NULL LIMIT 32", (batch_id,),
    ).fetchall()
    return [str(row[0]) for row in rows]


def drop_empty_batch(connection: sqlite3.Connection, batch: BatchRow, note: str,
                     now: float) -> None:
    """Finish a batch that carries nothing any more (its jobs were cancelled)."""
    connection.execute(
        "UPDATE batches SET state = 'finished', finished_at = ?, note = ? WHERE id = ?",
        (now, note, batch.id),
    )
    batch.state = BatchState.FINISHED


def enqueued_tokens(connection: sqlite3.Connection, provider: str, model: str) -> int:
    """Estimated prompt tokens of the model's batches that the provider may still hold."""
    row = connection.execute(
        "SELECT COALESCE(SUM(tokens), 0) FROM batches WHERE provider = ? AND model = ? "
        "AND state != 'finished' AND (remote_status IS NULL OR remote_status IN "
        "('validating', 'in_progress', 'finalizing', 'cancelling'))",
        (provider, model),
    ).fetchone()
    return int(row[0])


async def batch_turnarounds(
    connection: aiosqlite.Connection, limit: int = 200
) -> list[tuple[tuple[str, str, Tier], float]]:
    """Observed batch turnarounds (created to completed), for the planner's latency book."""
    rows = await connection.execute_fetchall(
        "SELECT provider, model, finished_at - submitted_at FROM batches "
        "WHERE state = 'finished' AND note = 'completed' AND submitted_at IS NOT NULL "
        "ORDER BY id DESC LIMIT ?", (limit,),
    )
    return [((str(p), str(m), Tier.BATCH), float(s)) for p, m, s in reversed(list(rows))]


# --- giving lines back --------------------------------------------------------------------


def release_lines(
    connection: sqlite3.Connection, batch: BatchRow, ids: Iterable[int] | None, now: float,
    *, charge_attempt: bool = False, escalated: bool = False,
) -> list[RequeuedLine]:
    """Give the batch's waiting lines (``ids``, or all) back to the job keeper."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        requeued = _release(connection, batch.id, ids, charge_attempt)
        if escalated:
            connection.execute("UPDATE batches SET escalated_at = ? WHERE id = ?",
                               (now, batch.id))
            batch.escalated_at = now
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
    return requeued


def _release(
    connection: sqlite3.Connection, batch_id: int, ids: Iterable[int] | None,
    charge_attempt: bool,
) -> list[RequeuedLine]:
    bump = ", attempts = attempts + 1" if charge_attempt else ""
    if ids is None:
        rows = connection.execute(
            "SELECT deadline_at, id, job_id, attempts FROM job_requests WHERE batch_id = ? "
            "AND state = 'queued'", (batch_id,),
        ).fetchall()
    else:
        wanted = set(ids)
        rows = [row for row in connection.execute(
            "SELECT deadline_at, id, job_id, attempts FROM job_requests WHERE batch_id = ? "
            "AND state = 'queued'", (batch_id,),
        ) if row[1] in wanted]
    connection.executemany(
        f"UPDATE job_requests SET batch_id = NULL{bump} WHERE id = ? AND batch_id = ?",
        ((row[1], batch_id) for row in rows),
    )
    extra = 1 if charge_attempt else 0
    return [RequeuedLine(float(d), int(i), str(j), int(a) + extra) for d, i, j, a in rows]


def finish_batch(
    connection: sqlite3.Connection, batch: BatchRow, requeue: dict[int, bool], note: str,
    now: float,
) -> list[RequeuedLine]:
    """Give back ``requeue`` (id → charge an attempt) and every line of the batch that got no
    result, and mark the batch finished: one transaction, so this happens exactly once."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        charged = [i for i, charge in requeue.items() if charge]
        requeued = _release(connection, batch.id, charged, True) if charged else []
        requeued += _release(connection, batch.id, None, False)
        job_ids = {r.job_id for r in requeued}
        connection.execute(
            "UPDATE batches SET state = 'finished', finished_at = ?, note = ? WHERE id = ?",
            (now, note, batch.id),
        )
        _complete_jobs(connection, job_ids, now)
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
    batch.state = BatchState.FINISHED
    return requeued


def _complete_jobs(connection: sqlite3.Connection, job_ids: set[str], now: float) -> None:
    if job_ids:
        marks = ",".join("?" * len(job_ids))
        connection.execute(COMPLETE_FINISHED_JOBS.format(only=f"AND id IN ({marks})"),
                           (now, *job_ids))


# --- storing results ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Line:
    """A request carried by the batch, as mapping needs it."""

    job_id: str
    custom_id: str
    attempts: int
    operation: str | None
    uid: int | None
    in_batch: bool
    cache_key: bytes | None = None
    cache_ttl: float | None = None
    deadline_at: float = math.inf
    submitted_at: float | None = None  # its job's creation


class ResultMapper:
    """Stores a finished batch's output and error lines: results, ledger entries, re-queues.

    Feed it the downloaded files with ``feed``; ``finish`` gives back what got no result and
    marks the batch finished. Each chunk of results commits on its own; repeating a chunk
    after a crash stores nothing twice.
    """

    def __init__(
        self, connection: sqlite3.Connection, batch: BatchRow, prices: PriceBook,
        now: float, *, after_first_chunk: Callable[[], None] | None = None,
        commit: Callable[[BatchChunk], BatchChunkStored] | None = None,
    ) -> None:
        self._connection = connection
        # How a chunk is stored: through the ledger (the one writer of money) in the daemon,
        # or on ``connection`` directly (tools, tests).
        self._store = commit or (lambda chunk: store_batch_chunk(connection, chunk))
        self._after_first_chunk = after_first_chunk
        self._batch = batch
        self._now = now
        self._prices = prices
        self.report = MapReport()
        self.requeue: dict[int, bool] = {}  # request id → charge an attempt
        self._lines = self._load_lines()
        self._results: list[tuple[int, RequestState, bytes, int | None, int | None, int]] = []
        self._entries: list[Settled] = []

    def _load_lines(self) -> dict[int, _Line]:
        rows = self._connection.execute(
            "SELECT r.id, r.job_id, r.custom_id, r.attempts, j.operation, j.uid, r.cache_key, "
            "r.cache_ttl, r.deadline_at, j.created_at FROM job_requests r "
            "JOIN jobs j ON j.id = r.job_id WHERE r.batch_id = ?",
            (self._batch.id,),
        )
        return {int(i): _Line(str(j), str(c), int(a), o, u, True, k, t, float(d), float(s))
                for i, j, c, a, o, u, k, t, d, s in rows}

    def line_ids(self) -> list[int]:
        """The requests the batch carries (not those given back before)."""
        return [request_id for request_id, line in self._lines.items() if line.in_batch]

    def _line(self, request_id: int) -> _Line | None:
        line = self._lines.get(request_id)
        if line is not None:
            return line
        # Given back before its answer came (escalated): still store and bill the answer.
        row = self._connection.execute(
            "SELECT r.job_id, r.custom_id, r.attempts, j.operation, j.uid, r.cache_key, "
            "r.cache_ttl, r.deadline_at, j.created_at FROM job_requests r "
            "JOIN jobs j ON j.id = r.job_id WHERE r.id = ?",
            (request_id,),
        ).fetchone()
        if row is None:
            return None
        line = _Line(str(row[0]), str(row[1]), int(row[2]), row[3], row[4], False, row[5],
                     row[6], float(row[7]), float(row[8]))
        self._lines[request_id] = line
        return line

    def feed(self, path: Path) -> None:
        """Map every line of a downloaded output or error file."""
        with path.open("rb") as lines:
            for raw in lines:
                if raw.strip():
                    self._map(raw)
                if len(self._results) >= CHUNK:
                    self._commit()
        self._commit()

    def fail_lines(self, failures: dict[int, tuple[str, str]]) -> None:
        """Store ``failures`` (request id → (code, message)) as failed results, e.g. the lines
        a batch's validation refused."""
        for request_id, (code, message) in failures.items():
            line = self._line(request_id)
            if line is None:
                continue
            self._fail(request_id, line, None, {"code": code, "message": message})
        self._commit()

    def _map(self, raw: bytes) -> None:
        try:
            document = orjson.loads(raw)
            custom = str(document["custom_id"]).encode()
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.report.unreadable += 1
            return
        match = _CUSTOM_ID.fullmatch(custom)
        line = self._line(int(match.group(1))) if match else None
        if match is None or line is None:
            self.report.unreadable += 1
            return
        request_id = int(match.group(1))
        response = document.get("response")
        error = document.get("error")
        if isinstance(response, dict) and response.get("status_code") == 200 \
                and isinstance(response.get("body"), dict):
            self._succeed(request_id, line, document, response)
        elif isinstance(response, dict):
            status = response.get("status_code")
            if _retryable(status, response.get("body")):
                # Charged an attempt; past [batch] max_attempts the job keeper sends it
                # directly (its deadline permitting) instead of failing it.
                self.requeue[request_id] = True
            else:
                self._fail(request_id, line, response, None)
        else:
            error = error if isinstance(error, dict) else {"code": "unknown", "message": ""}
            # Cancelled lines were given back for their deadline (no attempt charged); an
            # expired or failed line is charged one, so it goes into another batch only while
            # attempts are left, and directly after that.
            self.requeue[request_id] = error.get("code") not in _UNCHARGED_CODES

    def _succeed(self, request_id: int, line: _Line, document: dict[str, Any],
                 response: dict[str, Any]) -> None:
        usage = usage_of(response["body"])
        cost = standard = None
        if usage is not None:
            batch = self._batch
            billed = bill(self._prices, batch.provider, batch.model, Tier.BATCH, usage)
            cost, standard = billed.cost_picodollars, billed.list_cost_picodollars
            self._entries.append(Settled(
                request_id=f"{line.job_id}.{request_id}.b{batch.id}",
                provider=batch.provider, model=batch.model, endpoint=batch.endpoint,
                tier=Tier.BATCH, usage=usage, cost_picodollars=cost,
                standard_cost_picodollars=standard, caller=Caller(uid=line.uid),
                operation=line.operation, status=200,
                started_at=batch.submitted_at or batch.created_at, finished_at=self._now,
                flag=billed.flag, saving_source=billed.saving_source,
                price_version=billed.price_version,
                deadline_window=(line.deadline_at - line.submitted_at
                                 if line.submitted_at is not None else None),
                late=self._now > line.deadline_at,
            ))
        result = kept_json({  # held until the chunk's commit
            "id": document.get("id") or f"batch_req_{request_id}",
            "custom_id": line.custom_id, "response": response, "error": None,
            **({"late": True} if self._now > line.deadline_at else {}),
        })
        self._results.append((request_id, RequestState.SUCCEEDED, result, cost, standard,
                              line.attempts + 1))
        if line.cache_key is not None and line.cache_ttl is not None:
            batch = self._batch
            self.report.cache_fills.append(NewEntry(
                line.cache_key, False, kept_json(response["body"]), batch.provider,
                batch.model, batch.endpoint.value, Tier.BATCH, usage or Usage(), line.cache_ttl,
            ))

    def _fail(self, request_id: int, line: _Line, response: dict[str, Any] | None,
              error: dict[str, Any] | None) -> None:
        result = kept_json({
            "id": f"batch_req_{request_id}", "custom_id": line.custom_id,
            "response": response, "error": error,
            **({"late": True} if self._now > line.deadline_at else {}),
        })
        self._results.append((request_id, RequestState.FAILED, result, None, None,
                              line.attempts + 1))

    def _commit(self) -> None:
        if not self._results and not self._entries:
            return
        results, self._results = self._results, []
        entries, self._entries = self._entries, []
        lines = {request_id: (self._lines[request_id].job_id, self._lines[request_id].in_batch)
                 for request_id, *_rest in results}
        stored = self._store(BatchChunk(self._batch.id, results, entries, lines, self._now))
        report = self.report
        report.outcomes += stored.outcomes
        report.billed += stored.billed
        report.paid_twice += stored.paid_twice
        for outcome in stored.outcomes:
            if outcome.state == RequestState.SUCCEEDED:
                report.succeeded += 1
            else:
                report.failed += 1
        if self._after_first_chunk is not None:
            hook, self._after_first_chunk = self._after_first_chunk, None
            hook()

    def finish(self, note: str) -> MapReport:
        """Give back what got no result, and mark the batch finished."""
        self._commit()
        self.report.requeued = finish_batch(self._connection, self._batch, self.requeue, note,
                                            self._now)
        return self.report


def store_batch_chunk(connection: sqlite3.Connection, chunk: BatchChunk) -> BatchChunkStored:
    """Store a chunk of a batch's results with their ledger entries, and end the reservations
    of the lines it answers, in one transaction. Each result is stored only if its line still
    waits, each entry only if new: storing a chunk again after a crash changes nothing."""
    stored: list[LineOutcome] = []
    paid_twice = 0
    connection.execute("BEGIN IMMEDIATE")
    try:
        # Which entries and results are new is read first, inside this write transaction
        # (nothing else can change them meanwhile), so the writes go in bulk.
        known = _existing(connection, "SELECT request_id FROM ledger_entries "
                          "WHERE request_id IN ({marks})", [e.request_id for e in chunk.entries])
        billed = [entry for entry in chunk.entries if entry.request_id not in known]
        connection.executemany(INSERT_ENTRY, [entry_row(entry) for entry in billed])
        waiting = _existing(connection, "SELECT id FROM job_requests WHERE id IN ({marks}) "
                            "AND state = 'queued'", [r[0] for r in chunk.results])
        tier = Tier.BATCH.value
        rows = []
        for request_id, state, result, cost, standard, attempts in chunk.results:
            job_id, in_batch = chunk.lines[request_id]
            if request_id in waiting:
                waiting.discard(request_id)  # a line answered twice in the files: once
                rows.append((state, tier if state == RequestState.SUCCEEDED else None, cost,
                             standard, result, attempts, chunk.now, request_id))
                stored.append(LineOutcome(request_id, job_id, state, cost, standard, in_batch))
            elif state == RequestState.SUCCEEDED and not in_batch:
                paid_twice += 1
        connection.executemany(
            "UPDATE job_requests SET state = ?, tier = ?, cost_picodollars = ?, "
            "standard_cost_picodollars = ?, result = ?, attempts = ?, finished_at = ? "
            "WHERE id = ? AND state = 'queued'", rows)
        connection.executemany("DELETE FROM reservations WHERE request_id = ?",
                               [(line_key(r[0]),) for r in chunk.results])
        _complete_jobs(connection, {o.job_id for o in stored}, chunk.now)
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
    return BatchChunkStored(stored, billed, paid_twice)


def _existing(connection: sqlite3.Connection, query: str, keys: Sequence[Any]) -> set[Any]:
    """Which of ``keys`` the query (with ``{marks}`` for the list) finds."""
    found: set[Any] = set()
    for start in range(0, len(keys), 900):
        chunk = keys[start:start + 900]
        found.update(row[0] for row in connection.execute(
            query.format(marks=",".join("?" * len(chunk))), chunk))
    return found


def _retryable(status: object, body: object) -> bool:
    if not isinstance(status, int):
        return True
    if status == 429:
        error = body.get("error") if isinstance(body, dict) else None
        kind = error.get("type") or error.get("code") if isinstance(error, dict) else None
        return kind not in _QUOTA
    return status >= 500


def input_line_ids(path: Path, numbers: set[int]) -> dict[int, int]:
    """Line number (from 1) → request id, for the given lines of a batch input file."""
    found: dict[int, int] = {}
    if not numbers or not path.exists():
        return found
    last = max(numbers)
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if number in numbers:
                match = re.match(rb'\{"custom_id":"r(\d+)"', raw)
                if match:
                    found[number] = int(match.group(1))
            if number >= last:
                break
    return found


def batch_files(state_dir: Path, intent: str) -> BatchFiles:
    """Where a batch's input, output and error files live on disk."""
    folder = state_dir / "batches"
    return BatchFiles(intent, folder / f"{intent}.input.jsonl",
                      folder / f"{intent}.output.jsonl", folder / f"{intent}.errors.jsonl")


def remove_files(files: BatchFiles) -> None:
    """Remove a finished batch's files: the three, their partial copies, and whatever else a
    provider kept beside them under the intent's name."""
    for path in files.input.parent.glob(f"{files.intent}.*"):
        path.unlink(missing_ok=True)


def remote_ids_since(connection: sqlite3.Connection, provider: str, since: float
                     ) -> frozenset[str]:
    """The upstream ids of ``provider``'s batches created since ``since``: those a search for a
    batch lost in a crash must not take for it."""
    return frozenset(row[0] for row in connection.execute(
        "SELECT remote_id FROM batches WHERE provider = ? AND created_at >= ? "
        "AND remote_id IS NOT NULL", (provider, since)))


def upload_name(intent: str) -> str:
    """The name a batch's input file is uploaded under: finding it again is how an upload
    interrupted by a crash is recognised."""
    return f"llmspool-{intent}.jsonl"


