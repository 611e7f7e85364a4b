"""The batch rows' lifecycle, and the SQL that moves a batch's lines: synchronous, run in a thread.

The batch actors move tens of thousands of lines at a time (assign them to a batch, write the
input file, store the results and their ledger entries). Done through an asynchronous
connection, every statement is a hop to its thread and back; here each step is one function
that the actor runs with ``anyio.to_thread.run_sync`` on its own synchronous connection to the
store, SQLite or PostgreSQL (``ThreadedConnection``), so a 100,000-line batch is mapped in
seconds.

This module owns a batch's row from intent to finished: opening it (assigning lines),
marking it uploaded, submitted, polled, cancel-requested, giving lines back and finishing it,
and the reads the actors plan with (open batches, enqueued tokens, turnarounds). Storing a
finished batch's results is ``store.batch_results``; its files on disk, ``store.batch_files``.

Exactly once, across crashes: every write is guarded by the state it expects
(``WHERE batch_id = ? AND state = 'queued'``), a batch line's ledger entry has a deterministic
request id (stored only if new), and a batch is marked finished in the same transaction that
gives its unfinished lines back. Repeating any step after a crash changes nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio

from llmspool.core.calls import Endpoint, Tier
from llmspool.core.states import BatchState
from llmspool.store.backend import StoreLocation
from llmspool.store.connect import connect
from llmspool.store.connections import AsyncConnection, Connection
from llmspool.store.jobs import COMPLETE_FINISHED_JOBS
from llmspool.store.records import BatchCandidate, RequeuedLine

_T = TypeVar("_T")

class ThreadedConnection:
    """One batch actor's connection to the store: each call to a function of the store's batch
    modules runs in a worker thread, one at a time (the actor awaits each before the next)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    @classmethod
    async def open(cls, location: StoreLocation) -> ThreadedConnection:
        return cls(await anyio.to_thread.run_sync(connect, location))

    async def run(self, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``function(connection, *args, **kwargs)`` in a worker thread. Not cancellable
        once started: a transaction that has begun always ends."""
        return await anyio.to_thread.run_sync(
            lambda: function(self.connection, *args, **kwargs))

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.connection.close)


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



# --- building and opening -----------------------------------------------------------------


def open_batch(
    connection: Connection, intent: str, candidates: Sequence[BatchCandidate],
    traceparents: Iterable[str], now: float, daemon: str | None = None,
) -> BatchRow | None:
    """Record the intent to send ``candidates`` as one batch and assign them to it, in one
    transaction; None if none of them is still waiting (cancelled jobs). ``daemon``: the
    daemon making it, whose batch it is in a shared store."""
    first = candidates[0]
    deadline = min(c.deadline_at for c in candidates)
    connection.execute("BEGIN IMMEDIATE")
    try:
        (batch_id,) = connection.execute(
            "INSERT INTO batches (intent, provider, endpoint, model, state, lines, bytes, "
            "tokens, deadline_at, created_at, daemon) "
            "VALUES (?, ?, ?, ?, 'intent', 0, 0, 0, ?, ?, ?) RETURNING id",
            (intent, first.provider, first.endpoint.value, first.model, deadline, now, daemon),
        ).fetchone()
        connection.executemany(
            # Not a line another daemon of a shared store claimed meanwhile (it sends it).
            "UPDATE job_requests SET batch_id = ? WHERE id = ? AND state = 'queued' "
            "AND batch_id IS NULL AND (claimed_by IS NULL OR claimed_by = ?)",
            ((batch_id, c.request_id, daemon) for c in candidates),
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
    return BatchRow(int(batch_id), intent, first.provider, first.endpoint, first.model,
                    BatchState.INTENT, lines, size, tokens, deadline, now,
                    traceparents=list(traceparents))


def lines_to_reserve(connection: Connection, ids: Sequence[int]
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


def mark_uploaded(connection: Connection, batch: BatchRow, file_id: str | None) -> None:
    """The input is upstream (``file_id`` None: it goes with the create call)."""
    connection.execute(
        "UPDATE batches SET state = 'uploaded', input_file_id = ? WHERE id = ?",
        (file_id, batch.id),
    )
    batch.state, batch.input_file_id = BatchState.UPLOADED, file_id


def mark_submitted(
    connection: Connection, batch: BatchRow, remote_id: str, status: str, now: float
) -> None:
    connection.execute(
        "UPDATE batches SET state = 'submitted', remote_id = ?, remote_status = ?, "
        "submitted_at = ? WHERE id = ?",
        (remote_id, status, now, batch.id),
    )
    batch.state, batch.remote_id, batch.remote_status = BatchState.SUBMITTED, remote_id, status
    batch.submitted_at = now


def record_poll(
    connection: Connection, batch: BatchRow, status: str, completed: int, failed: int,
    now: float,
) -> None:
    connection.execute(
        "UPDATE batches SET remote_status = ?, completed = ?, failed = ?, polled_at = ? "
        "WHERE id = ?",
        (status, completed, failed, now, batch.id),
    )
    batch.remote_status, batch.completed, batch.failed, batch.polled_at = (
        status, completed, failed, now)


def mark_cancel_requested(connection: Connection, batch: BatchRow, now: float) -> None:
    connection.execute("UPDATE batches SET cancel_requested_at = ? WHERE id = ?",
                       (now, batch.id))
    batch.cancel_requested_at = now


def open_batches(connection: Connection, batch_id: int | None = None,
                 daemon: str | None = None) -> list[BatchRow]:
    """Every batch not finished (or just ``batch_id``, if it is not), oldest first, with the
    traceparents of the jobs it carries; ``daemon``: only that daemon's (a shared store)."""
    only = "" if batch_id is None else f"AND id = {int(batch_id)}"
    if daemon is not None:
        only += " AND daemon = ?"
    rows = connection.execute(
        f"SELECT {_BATCH_COLUMNS} FROM batches WHERE state != 'finished' {only} ORDER BY id",
        () if daemon is None else (daemon,),
    ).fetchall()
    batches = [_batch(row) for row in rows]
    for batch in batches:
        batch.traceparents = traceparents_of(connection, batch.id)
    return batches


def traceparents_of(connection: Connection, batch_id: int) -> list[str]:
    rows = connection.execute(
        "SELECT DISTINCT j.traceparent FROM job_requests r JOIN jobs j ON j.id = r.job_id "
        "WHERE r.batch_id = ? AND j.traceparent IS NOT NULL LIMIT 32", (batch_id,),
    ).fetchall()
    return [str(row[0]) for row in rows]


def drop_empty_batch(connection: Connection, batch: BatchRow, note: str,
                     now: float) -> None:
    """Finish a batch that carries nothing any more (its jobs were cancelled)."""
    connection.execute(
        "UPDATE batches SET state = 'finished', finished_at = ?, note = ? WHERE id = ?",
        (now, note, batch.id),
    )
    batch.state = BatchState.FINISHED


def enqueued_tokens(connection: Connection, provider: str, model: str) -> int:
    """Estimated prompt tokens of the model's batches that the provider may still hold."""
    row = connection.execute(
        "SELECT COALESCE(SUM(tokens), 0) FROM batches WHERE provider = ? AND model = ? "
        "AND state != 'finished' AND (remote_status IS NULL OR remote_status IN "
        "('validating', 'in_progress', 'finalizing', 'cancelling'))",
        (provider, model),
    ).fetchone()
    return int(row[0])


async def batch_turnarounds(
    connection: AsyncConnection, limit: int = 200
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
    connection: Connection, batch: BatchRow, ids: Iterable[int] | None, now: float,
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
    connection: Connection, batch_id: int, ids: Iterable[int] | None,
    charge_attempt: bool,
) -> list[RequeuedLine]:
    bump = ", attempts = attempts + 1" if charge_attempt else ""
    if ids is None:
        rows = connection.execute(
            "SELECT deadline_at, id, job_id, attempts FROM job_requests WHERE batch_id = ? "
            "AND state = 'queued' ORDER BY id", (batch_id,),
        ).fetchall()
    else:
        wanted = set(ids)
        rows = [row for row in connection.execute(
            "SELECT deadline_at, id, job_id, attempts FROM job_requests WHERE batch_id = ? "
            "AND state = 'queued' ORDER BY id", (batch_id,),
        ) if row[1] in wanted]
    connection.executemany(
        f"UPDATE job_requests SET batch_id = NULL{bump} WHERE id = ? AND batch_id = ?",
        ((row[1], batch_id) for row in rows),
    )
    extra = 1 if charge_attempt else 0
    return [RequeuedLine(float(d), int(i), str(j), int(a) + extra) for d, i, j, a in rows]


def finish_batch(
    connection: Connection, batch: BatchRow, requeue: dict[int, bool], note: str,
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
        complete_jobs(connection, job_ids, now)
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
    batch.state = BatchState.FINISHED
    return requeued


def complete_jobs(connection: Connection, job_ids: set[str], now: float) -> None:
    """Mark finished those of ``job_ids`` whose every line has ended (inside the caller's
    transaction)."""
    if job_ids:
        marks = ",".join("?" * len(job_ids))
        connection.execute(COMPLETE_FINISHED_JOBS.format(only=f"AND id IN ({marks})"),
                           (now, *job_ids))


def remote_ids_since(connection: Connection, provider: str, since: float
                     ) -> frozenset[str]:
    """The upstream ids of ``provider``'s batches created since ``since``: those a search for a
    batch lost in a crash must not take for it."""
    return frozenset(row[0] for row in connection.execute(
        "SELECT remote_id FROM batches WHERE provider = ? AND created_at >= ? "
        "AND remote_id IS NOT NULL", (provider, since)))
