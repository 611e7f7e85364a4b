"""The daemons sharing a PostgreSQL store, and their leases (``daemons``, migration
postgresql/0002_fleet.sql).

A daemon registers as it starts and renews its lease (``[store] lease``) three times a lease;
one whose lease has run out is dead, and the next daemon to renew takes it over
(``store.ledger.take_over``). Lease times are the database server's clock, the one clock every
host of the fleet shares, so a host's skewed clock cannot expire another's lease early.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmspool.store.connections import Connection

__all__ = ["Member", "expired", "fleet_report", "leave", "register", "renew"]

_NOW = "EXTRACT(EPOCH FROM clock_timestamp())"


@dataclass(frozen=True, slots=True)
class Member:
    """This daemon, as the fleet knows it."""

    name: str
    host: str
    pid: int
    version: str
    lease: float  # seconds


def register(connection: Connection, member: Member) -> None:
    """Join the fleet (again, after a restart under the same name), with a fresh lease."""
    connection.execute(
        "INSERT INTO daemons (name, host, pid, version, started_at, renewed_at, lease_until) "
        f"VALUES (?, ?, ?, ?, {_NOW}, {_NOW}, {_NOW} + ?) ON CONFLICT (name) DO UPDATE SET "
        "host = excluded.host, pid = excluded.pid, version = excluded.version, "
        "started_at = excluded.started_at, renewed_at = excluded.renewed_at, "
        "lease_until = excluded.lease_until",
        (member.name, member.host, member.pid, member.version, member.lease))


def renew(connection: Connection, member: Member) -> bool:
    """Extend this daemon's lease; False if its row was gone (others took it for dead)."""
    cursor = connection.execute(
        f"UPDATE daemons SET renewed_at = {_NOW}, lease_until = {_NOW} + ? WHERE name = ?",
        (member.lease, member.name))
    return cursor.rowcount == 1


def leave(connection: Connection, member: Member) -> None:
    """Leave the fleet, stopping cleanly: with nothing in flight there is nothing to take
    over. (A batch line's reservation outlives it, as its batch does; the daemon settles it
    when it starts again under its name.) The requests it claimed and did not send are
    offered to the fleet: the others work them meanwhile."""
    connection.execute("DELETE FROM daemons WHERE name = ?", (member.name,))
    connection.execute("UPDATE job_requests SET claimed_by = NULL WHERE claimed_by = ? "
                       "AND state = 'queued' AND batch_id IS NULL", (member.name,))
    connection.execute("DELETE FROM cache_flights WHERE daemon = ?", (member.name,))


def expired(connection: Connection) -> list[str]:
    """The daemons whose lease has run out."""
    rows = connection.execute(
        f"SELECT name FROM daemons WHERE lease_until < {_NOW} ORDER BY name").fetchall()
    return [row[0] for row in rows]


def fleet_report(connection: Connection) -> list[dict[str, Any]]:
    """Every daemon of the fleet: where it runs, how fresh its lease is, the calls it holds
    reservations for, the deferred work it has (jobs in progress, open batches) and the queued
    requests it has claimed (of its own jobs, lines it is sending or batching; of others',
    lines it helps with), as ``llmspool status`` shows them."""
    jobs = dict(connection.execute(
        "SELECT daemon, COUNT(*) FROM jobs WHERE status = 'in_progress' AND daemon IS NOT NULL "
        "GROUP BY daemon").fetchall())
    batches = dict(connection.execute(
        "SELECT daemon, COUNT(*) FROM batches WHERE state != 'finished' AND daemon IS NOT NULL "
        "GROUP BY daemon").fetchall())
    claimed = dict(connection.execute(
        "SELECT claimed_by, COUNT(*) FROM job_requests WHERE state = 'queued' "
        "AND claimed_by IS NOT NULL GROUP BY claimed_by").fetchall())
    rows = connection.execute(
        "SELECT d.name, d.host, d.pid, d.version, d.started_at, "
        f"{_NOW} - d.renewed_at, d.lease_until - {_NOW}, "
        "COUNT(r.request_id), COALESCE(SUM(r.estimate_picodollars), 0) "
        "FROM daemons d LEFT JOIN reservations r ON r.daemon = d.name "
        "GROUP BY d.name, d.host, d.pid, d.version, d.started_at, d.renewed_at, d.lease_until "
        "ORDER BY d.name").fetchall()
    return [{
        "name": name, "host": host, "pid": int(pid), "version": version,
        "started_at": float(started), "renewed_seconds_ago": round(float(age), 3),
        "lease_left_seconds": round(float(left), 3), "alive": float(left) > 0,
        "reservations": int(held), "reserved_picodollars": int(amount),
        "jobs_in_progress": int(jobs.get(name, 0)), "open_batches": int(batches.get(name, 0)),
        "requests_claimed": int(claimed.get(name, 0)),
    } for name, host, pid, version, started, age, left, held, amount in rows]
