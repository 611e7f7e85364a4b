"""SQL of jobs and their requests, in the store (SQLite or PostgreSQL); the job keeper actor
is its only writer.

Readers of committed results (the results endpoint) use their own connection: they never block
the writer (SQLite's WAL, PostgreSQL's MVCC), and a 100,000-line result file streams without
passing through the actor.

The statements are the same text on both backends except where one would be slow or has no
equivalent, each picked by the connection: on PostgreSQL a job's lines go in with ``COPY`` (a
job of more than a page then gathers the planner's statistics if the table has none), its
results are read along the (job_id, line) index whatever the statistics say, and a cancelled
line's error line and an embeddings line's count of inputs are made with its JSON functions;
on SQLite the routing pages name their index (``INDEXED BY``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from llmspool.core.states import JobStatus, RequestState
from llmspool.store.connections import AsyncConnection, PgAsyncConnection, is_sqlite
from llmspool.store.records import NewJob

RESULT_CHUNK = 1000
ROUTE_PAGE = 5000
COMPLETE_FINISHED_JOBS = (
    "UPDATE jobs SET status = 'completed', finished_at = ? WHERE status = 'in_progress' "
    "{only} AND NOT EXISTS (SELECT 1 FROM job_requests r WHERE r.job_id = jobs.id "
    "AND r.state = 'queued')"
)


@dataclass(frozen=True, slots=True)
class QueuedRequest:
    """What it takes to send one queued request."""

    id: int
    job_id: str
    custom_id: str
    endpoint: str
    provider: str
    model: str
    body: bytes
    deadline_at: float
    attempts: int
    routed_from_provider: str | None = None
    routed_from_model: str | None = None

    @property
    def routed_from(self) -> tuple[str, str] | None:
        """(provider, model) asked for, when a route rule chose ``model`` instead."""
        if self.routed_from_provider is None or self.routed_from_model is None:
            return None
        return self.routed_from_provider, self.routed_from_model


_JOB_REQUEST_COLUMNS = (
    "job_id, line, custom_id, endpoint, provider, model, body, deadline_at, state, cache_key, "
    "cache_ttl, routed_from_provider, routed_from_model, claimed_by"
)
_INSERT_JOB_REQUEST = (
    f"INSERT INTO job_requests ({_JOB_REQUEST_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


async def insert_job(connection: AsyncConnection, job: NewJob,
                     owner: str | None = None) -> None:
    """The job and all its requests, in one transaction: durable when this returns.
    ``owner``: in a store several daemons share, the daemon that works it, which claims its
    lines (it offers to the fleet those it routes to be sent: ``offer``)."""
    total = len(job.lines)
    await connection.execute("BEGIN IMMEDIATE")
    try:
        await connection.execute(
            "INSERT INTO jobs (id, created_at, deadline_at, operation, tags, uid, status, total, "
            "traceparent, daemon) VALUES (?, ?, ?, ?, ?, ?, 'in_progress', ?, ?, ?)",
            (job.id, job.created_at, job.deadline_at, job.operation,
             orjson.dumps(job.tags).decode(), job.uid, total, job.traceparent, owner),
        )
        # A generator, not a list: 100,000 parameter tuples would be ~12 MB more at the peak
        # (and the lines may come from a spool on disk, one at a time).
        rows = (
            (job.id, line.line, line.custom_id, line.endpoint.value, line.provider,
             line.model, line.body, job.deadline_at, "queued", line.cache_key, line.cache_ttl,
             *(line.routed_from or (None, None)), owner)
            for line in job.lines
        )
        if isinstance(connection, PgAsyncConnection):
            # COPY streams the rows in one statement, twice as fast as an executemany (which
            # would also hold them all: psycopg takes a list). The keeper's other tasks (the
            # pump, lines given back by batches) may read on this connection meanwhile: psycopg
            # holds the connection for the whole COPY (since 3.2.13, psycopg#1210), so they
            # wait for it.
            async with connection.raw.cursor() as cursor, cursor.copy(
                    f"COPY job_requests ({_JOB_REQUEST_COLUMNS}) FROM STDIN") as copy:
                for row in rows:
                    await copy.write_row(row)
        else:
            await connection.executemany(_INSERT_JOB_REQUEST, rows)
    except BaseException:
        await connection.execute("ROLLBACK")
        raise
    await connection.execute("COMMIT")
    if isinstance(connection, PgAsyncConnection) and total > ROUTE_PAGE:
        await _gather_statistics(connection)


async def _gather_statistics(connection: PgAsyncConnection) -> None:
    """Statistics of the job's lines for PostgreSQL's planner, if it has none yet.

    A job is read a page at a time (``job_id = ? AND line > ? ORDER BY line LIMIT ?``, and so
    are its results): with any statistics the planner walks the (job_id, line) index and stops
    at the page's end, but on a table never analyzed (a new store, until autovacuum gets to
    it) it guesses a job has a row or two, and sorts all of the job's lines for every page. A
    job of more than a page is the moment to gather them: once, a sample of the table."""
    rows = await connection.execute_fetchall(
        "SELECT reltuples FROM pg_class WHERE oid = CAST('job_requests' AS regclass)")
    if rows and rows[0][0] < 0:  # never analyzed (PostgreSQL 14 and later)
        await connection.execute("ANALYZE job_requests")


_QUEUED_COLUMNS = (
    "id, job_id, custom_id, endpoint, provider, model, body, deadline_at, attempts, "
    "routed_from_provider, routed_from_model"
)


async def fetch_requests(
    connection: AsyncConnection, ids: Sequence[int], claimer: str | None = None
) -> list[QueuedRequest]:
    """The requests ``ids`` still queued, to be sent now. ``claimer``: in a store several
    daemons share, this daemon, which claims them; those another daemon claimed first are left
    out (it sends them)."""
    if claimer is None:
        marks = ",".join("?" * len(ids))
        rows = await connection.execute_fetchall(
            f"SELECT {_QUEUED_COLUMNS} "
            f"FROM job_requests WHERE id IN ({marks}) AND state = 'queued' ORDER BY id",
            tuple(ids),
        )
    else:
        # A plain UPDATE (not SKIP LOCKED): a row another daemon is claiming at this moment is
        # waited for, then left out if it took it, never skipped while still offered.
        rows = sorted(await connection.execute_fetchall(
            "UPDATE job_requests SET claimed_by = ? WHERE id = ANY(?) AND state = 'queued' "
            f"AND (claimed_by IS NULL OR claimed_by = ?) RETURNING {_QUEUED_COLUMNS}",
            (claimer, list(ids), claimer)))
    return [QueuedRequest(*row) for row in rows]


async def claim_offered(connection: AsyncConnection, claimer: str, limit: int
                        ) -> list[QueuedRequest]:
    """Up to ``limit`` queued requests that other daemons' jobs offer (claimed by none, in no
    batch), the most urgent first, claimed by ``claimer``: each is claimed by one daemon
    however many ask at once (``SKIP LOCKED``: a row being claimed is passed over, not waited
    for)."""
    # The lines picked in a CTE, run once: as ``id IN (SELECT … LIMIT)`` the planner may run
    # the subquery again for each row it updates, and claim more than ``limit``.
    rows = await connection.execute_fetchall(
        "WITH picked AS (SELECT r.id FROM job_requests r JOIN jobs j ON j.id = r.job_id "
        "WHERE r.state = 'queued' AND r.claimed_by IS NULL AND r.batch_id IS NULL "
        "AND j.status = 'in_progress' AND j.daemon <> ? "
        "ORDER BY r.deadline_at, r.id LIMIT ? FOR UPDATE OF r SKIP LOCKED) "
        "UPDATE job_requests SET claimed_by = ? FROM picked WHERE job_requests.id = picked.id "
        f"RETURNING {', '.join('job_requests.' + c for c in _QUEUED_COLUMNS.split(', '))}",
        (claimer, limit, claimer))
    return [QueuedRequest(*row) for row in sorted(rows)]


async def offer(connection: AsyncConnection, claimer: str, ids: Sequence[int]) -> None:
    """Offer to the fleet the requests ``ids`` that ``claimer`` routed to be sent: it sends
    them when it gets to them, unless another daemon claims them first."""
    if ids:
        await connection.execute(
            "UPDATE job_requests SET claimed_by = NULL WHERE id = ANY(?) AND claimed_by = ?",
            (list(ids), claimer))


async def claim_unclaimed(connection: AsyncConnection, claimer: str,
                          only: Sequence[str] | None = None) -> None:
    """``claimer``'s jobs in progress (the jobs ``only``) claim back their offered requests,
    before they are routed again (at a start, or taken over): a line routed to a batch is then
    not sent by another daemon meanwhile. Requests ``claimer`` claimed of other daemons' jobs
    (before a restart) are offered again."""
    condition, parameters = _which_jobs(claimer, only, "job_id")
    await connection.execute(
        "UPDATE job_requests SET claimed_by = ? WHERE state = 'queued' AND claimed_by IS NULL "
        f"AND batch_id IS NULL AND {condition} AND job_id IN "
        "(SELECT id FROM jobs WHERE status = 'in_progress')", (claimer, *parameters))
    if only is None:
        await connection.execute(
            "UPDATE job_requests SET claimed_by = NULL WHERE claimed_by = ? AND state = 'queued' "
            "AND job_id NOT IN (SELECT id FROM jobs WHERE daemon = ?)", (claimer, claimer))


async def complete_finished_jobs(
    connection: AsyncConnection, now: float, job_ids: set[str] | None = None
) -> None:
    """Mark completed the jobs (``job_ids``, or all) in progress with no queued request left.

    With no ids it is the recovery sweep, for a job whose last result was stored just before
    a crash."""
    only = "" if job_ids is None else f"AND id IN ({','.join('?' * len(job_ids))})"
    await connection.execute(COMPLETE_FINISHED_JOBS.format(only=only), (now, *(job_ids or ())))


# Cancelled requests get an error line, so the results list every request. The line is made
# in the store (a job of 100,000 requests is cancelled in one statement), with each backend's
# JSON functions; both write it compact, as orjson would.
_CANCEL_SQLITE = (
    "UPDATE job_requests SET state = 'cancelled', finished_at = ?, "
    "result = CAST(json_object('id', 'batch_req_' || id, 'custom_id', custom_id, "
    "'response', NULL, 'error', json_object('code', 'cancelled', 'message', "
    "'the job was cancelled before this request ran')) AS BLOB) "
    "WHERE job_id = ? AND state = 'queued'"
)
_CANCEL_POSTGRESQL = (
    "UPDATE job_requests SET state = 'cancelled', finished_at = ?, "
    """result = convert_to('{"id":"batch_req_' || CAST(id AS TEXT) || '","custom_id":' || """
    """to_json(custom_id)::text || ',"response":null,"error":{"code":"cancelled",'"""
    """ || '"message":"the job was cancelled before this request ran"}}', 'UTF8') """
    "WHERE job_id = ? AND state = 'queued'"
)


async def cancel_job(connection: AsyncConnection, job_id: str) -> int:
    """Cancel the job's queued requests; how many there were."""
    now = time.time()
    await connection.execute("BEGIN IMMEDIATE")
    try:
        cursor = await connection.execute(
            _CANCEL_SQLITE if is_sqlite(connection) else _CANCEL_POSTGRESQL, (now, job_id))
        cancelled = cursor.rowcount
        await connection.execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = ? "
            "WHERE id = ? AND status = 'in_progress'",
            (now, job_id),
        )
    except BaseException:
        await connection.execute("ROLLBACK")
        raise
    await connection.execute("COMMIT")
    return cancelled


def _which_jobs(owner: str | None, only: Sequence[str] | None, column: str
                ) -> tuple[str, tuple[str, ...]]:
    """The condition (and its parameters) on ``column``, a job id, that keeps the jobs of
    ``owner`` (a shared store's daemon) and only the jobs ``only``; ("", ()): every job."""
    conditions: list[str] = []
    parameters: list[str] = []
    if owner is not None:
        conditions.append(f"{column} IN (SELECT id FROM jobs WHERE daemon = ?)")
        parameters.append(owner)
    if only is not None:
        conditions.append(f"{column} IN ({', '.join('?' * len(only)) or 'NULL'})")
        parameters += only
    return " AND ".join(conditions), tuple(parameters)


async def load_jobs(connection: AsyncConnection, owner: str | None = None,
                    only: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Every job still kept (``owner``'s only, in a shared store; the jobs ``only``, when
    given), with its counts by state and tier and its cost (status and states as enums)."""
    condition, parameters = _which_jobs(owner, only, "id")
    lines_condition, lines_parameters = _which_jobs(owner, only, "job_id")
    rows = await connection.execute_fetchall(
        "SELECT id, created_at, deadline_at, operation, tags, uid, status, total, finished_at, "
        f"traceparent FROM jobs{' WHERE ' + condition if condition else ''} "
        "ORDER BY created_at", parameters
    )
    jobs = {
        row[0]: {
            "id": row[0], "created_at": row[1], "deadline_at": row[2], "operation": row[3],
            "tags": orjson.loads(row[4]), "uid": row[5], "status": JobStatus(row[6]),
            "total": row[7], "finished_at": row[8], "traceparent": row[9], "states": {},
            "tiers": {}, "cost": 0, "standard": 0, "late": 0,
        }
        for row in rows
    }
    counts = await connection.execute_fetchall(
        "SELECT job_id, state, tier, COUNT(*), COALESCE(SUM(cost_picodollars), 0), "
        "COALESCE(SUM(standard_cost_picodollars), 0), "
        "SUM(CASE WHEN finished_at > deadline_at THEN 1 ELSE 0 END) "
        "FROM job_requests" + (" WHERE " + lines_condition if lines_condition else "")
        + " GROUP BY job_id, state, tier", lines_parameters
    )
    for job_id, state, tier, count, cost, standard, late in counts:
        job = jobs.get(job_id)
        if job is None:
            continue
        job["late"] += int(late or 0)
        job["states"][RequestState(state)] = job["states"].get(state, 0) + count
        if tier:
            job["tiers"][tier] = job["tiers"].get(tier, 0) + count
        job["cost"] += cost
        job["standard"] += standard
    return list(jobs.values())


async def ended_elsewhere(connection: AsyncConnection, job_ids: Sequence[str]) -> list[str]:
    """Of the jobs ``job_ids`` (in progress for the asking daemon), those the store has as
    ended: another daemon of a shared store cancelled or completed them."""
    if not job_ids:
        return []
    rows = await connection.execute_fetchall(
        "SELECT id FROM jobs WHERE id = ANY(?) AND status <> 'in_progress'", (list(job_ids),))
    return [str(row[0]) for row in rows]


async def delete_jobs_finished_before(connection: AsyncConnection, before: float) -> int:
    await connection.execute("BEGIN IMMEDIATE")
    try:
        cursor = await connection.execute(
            "DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?", (before,)
        )
        deleted = cursor.rowcount
    except BaseException:
        await connection.execute("ROLLBACK")
        raise
    await connection.execute("COMMIT")
    return deleted


_RESULTS_SQLITE = (
    "SELECT line, result FROM job_requests WHERE job_id = ? AND line > ? "
    "AND result IS NOT NULL ORDER BY line LIMIT ?"
)
# PostgreSQL's planner estimates ``result IS NOT NULL`` from statistics gathered when the job's
# results were still to come (none): it would then scan every line of the table for each
# chunk. Lines are read along the (job_id, line) index instead, those without a result skipped
# here.
_RESULTS_POSTGRESQL = (
    "SELECT line, result FROM job_requests WHERE job_id = ? AND line > ? ORDER BY line LIMIT ?"
)


async def iter_results(connection: AsyncConnection, job_id: str) -> AsyncIterator[bytes]:
    """The job's stored result lines, in input order, a chunk of lines at a time."""
    statement = _RESULTS_SQLITE if is_sqlite(connection) else _RESULTS_POSTGRESQL
    last_line = 0
    while True:
        rows = list(await connection.execute_fetchall(
            statement, (job_id, last_line, RESULT_CHUNK)))
        if not rows:
            return
        last_line = rows[-1][0]
        chunk = b"".join(bytes(result) + b"\n" for _line, result in rows if result is not None)
        if chunk:
            yield chunk


@dataclass(frozen=True, slots=True)
class Routable:
    """A queued request not carried by a batch: what deciding its route takes."""

    id: int
    job_id: str
    endpoint: str
    provider: str
    model: str
    deadline_at: float
    size: int
    inputs: int  # embeddings inputs (1 for other endpoints)
    attempts: int
    cache_key: bytes | None  # the response cache's key: identical lines share one answer


def _routable(inputs: str, claims: bool) -> str:
    """``claims``: the statement takes the routing daemon's name first, and leaves out the
    lines another daemon claimed (a shared store)."""
    return (
        "SELECT r.id, r.job_id, r.endpoint, r.provider, r.model, r.deadline_at, length(r.body), "
        f"CASE WHEN r.endpoint = '/v1/embeddings' THEN {inputs} ELSE 1 END, r.attempts, "
        "r.cache_key FROM job_requests r JOIN jobs j ON j.id = r.job_id "
        "WHERE r.state = 'queued' AND r.batch_id IS NULL AND j.status = 'in_progress' "
        + ("AND (r.claimed_by IS NULL OR r.claimed_by = ?) " if claims else "")
    )


# An embeddings line's inputs: the length of its "input" array (at least 1), or 1 for one
# string. Counted in the store, which parses the body anyway: routing a page reads no body.
_ROUTABLE_SQLITE = _routable("MAX(1, COALESCE(json_array_length(r.body, '$.input'), 1))",
                             claims=False)
_ROUTABLE_POSTGRESQL = _routable(
    "(SELECT CASE WHEN json_typeof(i) = 'array' THEN GREATEST(1, json_array_length(i)) "
    "ELSE 1 END FROM (SELECT convert_from(r.body, 'UTF8')::json -> 'input' AS i) AS e)",
    claims=True)


def _routable_page(routable: str, sqlite: bool) -> str:
    statement = routable.replace("r.cache_key FROM", "r.cache_key, r.line FROM")
    if sqlite:
        # Paged along the (job_id, line) index: SQLite's planner would otherwise pick the
        # partial index of queued requests and sort every queued row for each page.
        statement = statement.replace(
            "FROM job_requests r", "FROM job_requests r INDEXED BY job_requests_job_line")
    return statement + "AND r.job_id = ? AND r.line > ? ORDER BY r.line LIMIT ?"


_ROUTABLE_PAGE_SQLITE = _routable_page(_ROUTABLE_SQLITE, sqlite=True)
_ROUTABLE_PAGE_POSTGRESQL = _routable_page(_ROUTABLE_POSTGRESQL, sqlite=False)


def _claimer(connection: AsyncConnection, claimer: str | None) -> tuple[str | None, ...]:
    """The routing statements' first parameter: the routing daemon, on PostgreSQL."""
    return () if is_sqlite(connection) else (claimer,)


async def routable_requests(
    connection: AsyncConnection, ids: Sequence[int], claimer: str | None = None,
) -> list[Routable]:
    """Queued requests no batch carries, of the given ids (a job's are read in pages:
    ``routable_pages``); ``claimer``: in a shared store, the routing daemon (lines another
    daemon claimed are left out)."""
    found: list[Routable] = []
    routable = _ROUTABLE_SQLITE if is_sqlite(connection) else _ROUTABLE_POSTGRESQL
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        rows = await connection.execute_fetchall(
            routable + f"AND r.id IN ({','.join('?' * len(chunk))}) ORDER BY r.id",
            (*_claimer(connection, claimer), *chunk))
        found += [Routable(*row) for row in rows]
    return found


async def routable_pages(
    connection: AsyncConnection, job_id: str, page: int | None = None,
    claimer: str | None = None,
) -> AsyncIterator[list[Routable]]:
    """The job's queued requests no batch carries, ``page`` at a time in id order: a job of
    100,000 requests is routed (when submitted, and again at a restart) without holding all
    its rows at once (~36 MB). ``claimer``: as for ``routable_requests``."""
    after = 0
    page = page or ROUTE_PAGE  # read when called: a test makes pages small
    statement = _ROUTABLE_PAGE_SQLITE if is_sqlite(connection) else _ROUTABLE_PAGE_POSTGRESQL
    while True:
        # Paged by line number, along the (job_id, line) index.
        rows = list(await connection.execute_fetchall(
            statement, (*_claimer(connection, claimer), job_id, after, page)))
        if not rows:
            return
        yield [Routable(*row[:-1]) for row in rows]
        after = rows[-1][-1]


async def batched_twins(
    connection: AsyncConnection, owner: str | None = None, only: Sequence[str] | None = None,
) -> list[tuple[bytes, int, str, float]]:
    """(cache key, request id, job id, deadline) of the queued requests a batch carries, which
    identical lines may wait for (of ``owner``'s jobs only, in a shared store; of the jobs
    ``only``, when given)."""
    condition, parameters = _which_jobs(owner, only, "job_id")
    rows = await connection.execute_fetchall(
        "SELECT cache_key, id, job_id, deadline_at FROM job_requests WHERE state = 'queued' "
        "AND batch_id IS NOT NULL AND cache_key IS NOT NULL"
        f"{' AND ' + condition if condition else ''} ORDER BY id", parameters
    )
    return [(bytes(key), int(request_id), str(job_id), float(deadline))
            for key, request_id, job_id, deadline in rows]


async def carrying_batches(connection: AsyncConnection, job_id: str
                           ) -> list[dict[str, Any]]:
    """The upstream batches that carry the job's unfinished requests: where they stand at the
    provider (for ``llmspool status`` and ``wait``)."""
    rows = await connection.execute_fetchall(
        "SELECT b.remote_id, b.provider, b.model, b.state, b.remote_status, b.lines, "
        "b.completed, b.failed, b.submitted_at, b.cancel_requested_at, COUNT(*) "
        "FROM job_requests r JOIN batches b ON b.id = r.batch_id "
        "WHERE r.job_id = ? AND r.state = 'queued' GROUP BY b.id ORDER BY b.id",
        (job_id,))
    return [
        {"id": remote_id, "provider": provider, "model": model,
         # Not yet created upstream: still being built or uploaded by llmspool.
         "status": remote_status if remote_id else f"llmspool:{state}",
         "lines": lines, "completed": completed, "failed": failed,
         "submitted_at": submitted_at, "cancelling": cancel_requested_at is not None,
         "requests_of_job": count}
        for (remote_id, provider, model, state, remote_status, lines, completed, failed,
             submitted_at, cancel_requested_at, count) in rows
    ]


async def batched_counts(connection: AsyncConnection) -> dict[str, int]:
    """Queued requests per job that a batch carries."""
    rows = await connection.execute_fetchall(
        "SELECT job_id, COUNT(*) FROM job_requests WHERE state = 'queued' "
        "AND batch_id IS NOT NULL GROUP BY job_id"
    )
    return {str(job_id): int(count) for job_id, count in rows}
