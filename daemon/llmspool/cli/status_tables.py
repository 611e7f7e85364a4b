"""The tables ``llmspool status`` and ``llmspool top`` share: open batches, circuit breakers and
the fleet of daemons sharing a store, from their parts of ``/v1/status``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def breakers_table(breakers: Sequence[Mapping[str, Any]]) -> Any:
    """Circuit breakers, one row per (provider, tier) that has carried calls."""
    from rich.table import Table

    table = Table(title="circuit breakers")
    for column in ("provider", "tier", "state", "failures in a row", "opened", "probe in",
                   "last failure"):
        table.add_column(column, justify="right" if column in ("failures in a row", "opened",
                                                               "probe in") else "left")
    for breaker in breakers:
        probe = f"{breaker['retry_after_s']:.0f} s" if breaker["state"] == "open" else "-"
        table.add_row(breaker["provider"], breaker["tier"], breaker["state"],
                      str(breaker["consecutive_failures"]), str(breaker["times_opened"]), probe,
                      breaker["last_failure"] or "-")
    return table


def batches_table(batches: Mapping[str, Any], submitter: Mapping[str, Any]) -> Any:
    """Open batches, one row each: provider state, counts, age, time to deadline."""
    from rich.table import Table

    waiting = sum(group["requests"] for group in submitter.get("waiting", []))
    table = Table(title=f"batches: {len(batches['open'])} open, {batches['finished']} "
                        f"finished, {waiting} requests waiting to be batched")
    for column in ("batch", "model", "state", "done", "failed", "lines", "age",
                   "deadline in"):
        table.add_column(column, justify="left" if column in ("batch", "model", "state")
                         else "right")
    for batch in batches["open"]:
        state = batch["provider_status"] or batch["state"]
        if batch["escalated"]:
            state += " (escalated)"
        elif batch["cancel_requested"]:
            state += " (cancel asked)"
        table.add_row(batch["id"] or batch["intent"], batch["model"], state,
                      str(batch["completed"]), str(batch["failed"]), str(batch["lines"]),
                      f"{batch['age_s']:.0f} s", f"{batch['deadline_in_s']:.0f} s")
    return table


def fleet_table(fleet: Sequence[Mapping[str, Any]]) -> Any:
    """The daemons sharing the store: where each runs, its lease, the calls it holds, its
    deferred work and the queued requests it has claimed."""
    from rich.table import Table

    alive = sum(1 for daemon in fleet if daemon["alive"])
    table = Table(title=f"fleet: {alive} of {len(fleet)} daemons alive (shared store)")
    for column in ("daemon", "host", "pid", "version", "renewed", "lease left",
                   "calls in flight", "reserved", "jobs", "batches", "claimed"):
        table.add_column(column, justify="left" if column in ("daemon", "host", "version")
                         else "right")
    for daemon in fleet:
        left = daemon["lease_left_seconds"]
        table.add_row(daemon["name"], daemon["host"], str(daemon["pid"]), daemon["version"],
                      f"{daemon['renewed_seconds_ago']:.0f} s ago",
                      f"{left:.0f} s" if left > 0 else "expired",
                      str(daemon["reservations"]),
                      f"${daemon['reserved_picodollars'] / 10**12:.6f}",
                      str(daemon["jobs_in_progress"]), str(daemon["open_batches"]),
                      str(daemon.get("requests_claimed", 0)))
    return table
