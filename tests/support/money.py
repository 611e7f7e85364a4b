"""Reading what was billed, for money tests: the simulator's own log of the calls it billed,
and the daemon's ledger and reservations straight from its SQLite file (read-only)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from tests.support.processes import Sim

QUICK_BATCHES = """
[planner]
safety = "1s"
default_standard_latency = "1s"
default_batch_latency = "2s"

[batch]
max_age = "300ms"
poll_min = "200ms"
poll_max = "500ms"
cancel_wait = "2s"
"""
"""Daemon settings under which batches take seconds, so a deadline of an hour goes to a batch
(with the simulator's ``[sim.batch] turnaround`` of a second or so)."""


def billed_calls(sim: Sim) -> list[dict[str, Any]]:
    """Every call the simulator answered and billed, oldest first (``GET /_sim/requests``)."""
    calls: list[dict[str, Any]] = []
    since = 0
    while True:
        page = sim.request("GET", f"/_sim/requests?since={since}")
        assert isinstance(page, dict) and "data" in page, f"no request log in the sim: {page}"
        assert page["dropped"] == 0, "the simulator's request log overflowed"
        calls += page["data"]
        if not page.get("has_more") or not page["data"]:
            return calls
        since = page["data"][-1]["seq"]


def state_db(state_dir: Path) -> sqlite3.Connection:
    """The daemon's database, read-only, rows as mappings."""
    db = sqlite3.connect(f"file:{state_dir / 'llmspool.sqlite3'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    return db


def ledger_entries(state_dir: Path) -> list[dict[str, Any]]:
    """Every ledger entry, oldest first."""
    with closing(state_db(state_dir)) as db:
        return [dict(row) for row in db.execute("SELECT * FROM ledger_entries ORDER BY id")]


def spend_by_day(entries: list[dict[str, Any]]) -> dict[str, int]:
    """The ledger entries' cost (picodollars) per UTC day. A daily cap holds day by day: a run
    that crosses midnight UTC starts the new day with the whole cap again (a CI run once did,
    and its spend over both days was nearly twice the cap)."""
    days: dict[str, int] = {}
    for entry in entries:
        days[entry["day"]] = days.get(entry["day"], 0) + entry["cost_picodollars"]
    return days


def reservations(state_dir: Path) -> list[dict[str, Any]]:
    """What the ledger still holds reserved; the table must exist (reservations are durable)."""
    with closing(state_db(state_dir)) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert "reservations" in tables, "no reservations table: reservations are not durable"
        return [dict(row) for row in db.execute("SELECT * FROM reservations")]
