"""Requests waiting in a pending batch that a new identical call may wait for instead.

A queued job request records its cache key (migration 0005). When a call with the same key
misses the cache, and a request with that key is carried by a batch still open upstream, the
call may wait for that batch's answer (which lands in the cache) if the batch is expected to
end in time: by the planner's batch need (p95 turnaround x margin + safety) from when the
batch was submitted, before the call's deadline less the time a standard call needs.
"""

from __future__ import annotations

from llmspool.core.calls import Tier
from llmspool.policy.planner import Planner
from llmspool.store.backend import StoreLocation
from llmspool.store.connect import connect
from llmspool.store.connections import is_sqlite

_PENDING = (
    "SELECT b.provider, b.model, COALESCE(b.submitted_at, b.created_at) "
    "FROM job_requests r JOIN batches b ON b.id = r.batch_id "
    "WHERE r.cache_key = ? AND r.state = 'queued' AND r.batch_id IS NOT NULL "
    "AND b.state != 'finished' LIMIT 1"
)


class PendingBatches:
    """Reads the job store (never writes it), on the caller's thread: one indexed lookup."""

    def __init__(self, location: StoreLocation, planner: Planner) -> None:
        # A reader waits for SQLite's lock no longer than sqlite3's default (5 s): it runs on
        # the caller's thread. A PostgreSQL session opened read-only cannot write either.
        self._connection = connect(location, lock_wait_ms=5_000, read_only=True)
        if is_sqlite(self._connection):
            self._connection.execute("PRAGMA query_only=ON")
        self._planner = planner

    def expected_end(self, key: bytes) -> float | None:
        """When the pending batch that carries a request with ``key`` should end (None: no
        such batch)."""
        row = self._connection.execute(_PENDING, (key,)).fetchone()
        if row is None:
            return None
        provider, model, started = row
        return float(started) + self._planner.batch_expected(provider, model)

    def give_up_at(self, provider: str, model: str, deadline_at: float) -> float:
        """The last moment a call due at ``deadline_at`` may stop waiting and still be
        answered in time by a standard call."""
        return deadline_at - self._planner.need(provider, model, Tier.STANDARD)

    def close(self) -> None:
        self._connection.close()
