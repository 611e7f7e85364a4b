"""Storing a finished batch's results: the ``ResultMapper`` that maps the output and error
lines back to job requests (results, ledger entries, re-queues), and ``store_batch_chunk``,
which stores one chunk of them with its ledger entries in one transaction.

Synchronous, like ``store.batches``: the batch poller runs the mapper in a worker thread, and
the ledger (the one writer of money) stores the chunks. Exactly once, across crashes: each
result is stored only if its line still waits, each ledger entry only if new.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from llmspool.core.calls import Tier, Usage
from llmspool.core.states import RequestState
from llmspool.core.wire import kept_json, response_id_of, usage_of
from llmspool.policy.billing import PriceBook, bill
from llmspool.store.batches import BatchRow, complete_jobs, finish_batch
from llmspool.store.connections import Connection
from llmspool.store.ledger import INSERT_ENTRY, begin_money, entry_row, line_key
from llmspool.store.records import (
    BatchChunk,
    BatchChunkStored,
    Caller,
    LineOutcome,
    NewEntry,
    RequeuedLine,
    Settled,
)

CHUNK = 5000  # lines per transaction while storing results
_CUSTOM_ID = re.compile(rb"r(\d+)")
_UNCHARGED_CODES = frozenset({"batch_cancelled", "cancelled"})
_QUOTA = ("insufficient_quota", "credit_balance_exhausted", "billing_hard_limit_reached")


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
    routed_from: tuple[str, str] | None = None  # asked for, when a route chose another model


def _routed(provider: str | None, model: str | None) -> tuple[str, str] | None:
    return None if provider is None or model is None else (provider, model)


class ResultMapper:
    """Stores a finished batch's output and error lines: results, ledger entries, re-queues.

    Feed it the downloaded files with ``feed``; ``finish`` gives back what got no result and
    marks the batch finished. Each chunk of results commits on its own; repeating a chunk
    after a crash stores nothing twice.
    """

    def __init__(
        self, connection: Connection, batch: BatchRow, prices: PriceBook,
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
            "r.cache_ttl, r.deadline_at, j.created_at, r.routed_from_provider, "
            "r.routed_from_model FROM job_requests r "
            "JOIN jobs j ON j.id = r.job_id WHERE r.batch_id = ? ORDER BY r.id",
            (self._batch.id,),
        )
        return {int(i): _Line(str(j), str(c), int(a), o, u, True, k, t, float(d), float(s),
                              _routed(rp, rm))
                for i, j, c, a, o, u, k, t, d, s, rp, rm in rows}

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
            "r.cache_ttl, r.deadline_at, j.created_at, r.routed_from_provider, "
            "r.routed_from_model FROM job_requests r "
            "JOIN jobs j ON j.id = r.job_id WHERE r.id = ?",
            (request_id,),
        ).fetchone()
        if row is None:
            return None
        line = _Line(str(row[0]), str(row[1]), int(row[2]), row[3], row[4], False, row[5],
                     row[6], float(row[7]), float(row[8]), _routed(row[9], row[10]))
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
            billed = bill(self._prices, batch.provider, batch.model, Tier.BATCH, usage,
                          routed_from=line.routed_from)
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
                response_id=response_id_of(response["body"]),
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


def store_batch_chunk(connection: Connection, chunk: BatchChunk,
                      daemon: str | None = None) -> BatchChunkStored:
    """Store a chunk of a batch's results with their ledger entries, and end the reservations
    of the lines it answers, in one transaction. Each result is stored only if its line still
    waits, each entry only if new: storing a chunk again after a crash changes nothing.
    ``daemon``: the daemon storing it, named on the entries."""
    stored: list[LineOutcome] = []
    paid_twice = 0
    begin_money(connection)
    try:
        # Which entries and results are new is read first, inside this write transaction
        # (nothing else can change them meanwhile), so the writes go in bulk.
        known = _existing(connection, "SELECT request_id FROM ledger_entries "
                          "WHERE request_id IN ({marks})", [e.request_id for e in chunk.entries])
        billed = [entry for entry in chunk.entries if entry.request_id not in known]
        connection.executemany(INSERT_ENTRY, [entry_row(entry, daemon) for entry in billed])
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
        complete_jobs(connection, {o.job_id for o in stored}, chunk.now)
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
    return BatchChunkStored(stored, billed, paid_twice)


def _existing(connection: Connection, query: str, keys: Sequence[Any]) -> set[Any]:
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
