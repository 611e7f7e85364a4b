"""``llmspool top``'s frame from a snapshot made by hand: what a reader sees for the figures the
daemon answers (the fetching is ``top_data``; the real daemon is in tests/integration)."""

from __future__ import annotations

import io
import re
from typing import Any, cast

from llmspool.cli.top_data import Snapshot, StatusReport, mix
from llmspool.cli.top_view import render
from rich.console import Console

NOW = 1_780_000_000.0


def status(**changes: Any) -> StatusReport:
    """A daemon's ``/v1/status`` with one call in flight on flex and a breaker open."""
    report: dict[str, Any] = {
        "version": "9.9.9",
        "uptime_s": 3725.0,
        "queue": {"in_flight": 1, "waiting": 4, "slots": 64, "admitted": 20, "refused_full": 2,
                  "oldest_wait_s": 12.0},
        "dispatcher": {
            "in_flight": 1, "in_flight_by_tier": {"flex": 1},
            "served_by_tier": {"standard": 7, "flex": 11}, "failed": 3,
            "breakers": [{"provider": "openai", "tier": "flex", "state": "open",
                          "consecutive_failures": 5, "times_opened": 1, "retry_after_s": 25.0,
                          "last_failure": "503 from upstream"}],
        },
        "ledger": {
            "day": "2026-06-01", "spend_today_usd": 4.5, "saved_today_usd": 1.25,
            "calls_today": 21, "reserved_usd": 0.5, "calls_reserved": 1,
            "refused_by_budget": 1,
            "budgets": [{"cap": "[budgets] daily_usd", "limit_usd": 5.0, "spent_usd": 4.5,
                         "reserved_usd": 0.5, "fraction": 0.9},
                        {"cap": "[budgets.operations.evals] daily_usd", "limit_usd": 1.0,
                         "spent_usd": 1.2, "reserved_usd": 0.0, "fraction": 1.2}],
        },
        "cache": {"enabled": True, "entries": 12, "max_entries": 1000, "hits": 3,
                  "misses": 9, "hit_ratio": 0.25, "shared": 2},
        "jobs": {"jobs_in_progress": 1, "requests_queued": 40},
        "batch_submitter": {"waiting": [{"requests": 6}]},
        "batches": {"open": [{"id": "batch_abc", "intent": "i1", "model": "gpt-4.1-mini",
                              "state": "submitted", "provider_status": "in_progress",
                              "escalated": False, "cancel_requested": False, "completed": 30,
                              "failed": 1, "lines": 40, "age_s": 600.0,
                              "deadline_in_s": 7200.0}],
                    "finished": 2},
    }
    report.update(changes)
    return cast(StatusReport, report)


TODAY = {
    "total": {"saved_by_source": {"tier": 0.75, "cache": 0.5, "dedup": 0.0, "routing": 0.0}},
    "rows": [
        {"model": "gpt-4o-mini", "tier": "standard", "requests": 5, "spend_usd": 0.5,
         "saved_usd": 0.0},
        {"model": "gpt-4o-mini", "tier": "cache", "requests": 3, "spend_usd": 0.0,
         "saved_usd": 0.5},
        {"model": "gpt-4.1", "tier": "flex", "requests": 2, "spend_usd": 2.0, "saved_usd": 0.75},
    ],
}

JOB = {"id": "job_123", "status": "in_progress", "deadline_at": NOW + 3600, "operation": "evals",
       "counts": {"total": 40, "queued": 0, "running": 0, "in_batch": 9, "succeeded": 30,
                  "failed": 1, "cancelled": 0, "late": 0}}


def snapshot(**changes: Any) -> Snapshot:
    fields: dict[str, Any] = {"socket": "/run/llmspool/llmspool.sock", "taken_at": NOW,
                              "status": status(), "today": TODAY, "jobs": [JOB]}
    fields.update(changes)
    return Snapshot(**fields)


def text_of(frame: Any, width: int = 180) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(frame)
    output = console.file
    assert isinstance(output, io.StringIO)
    return output.getvalue()


def has_row(text: str, *cells: str) -> bool:
    pattern = r"[\s│|]+".join(re.escape(cell) for cell in cells)
    return re.search(rf"(^|[\s│|]){pattern}($|[\s│|])", text, re.MULTILINE) is not None


def test_the_header_names_the_daemon_and_the_quit_key() -> None:
    text = text_of(render(snapshot()))
    assert "llmspool 9.9.9 on /run/llmspool/llmspool.sock, up 1h 2m" in text
    assert "q quits" in text
    assert "q quits" not in text_of(render(snapshot(), keys=False))


def test_calls_by_tier_in_flight_served_and_the_callers_own() -> None:
    text = text_of(render(snapshot()))
    assert has_row(text, "standard", "0", "7", "5"), text
    assert has_row(text, "flex", "1", "11", "2"), text
    assert has_row(text, "cache", "0", "0", "3"), text
    assert has_row(text, "all", "1", "18", "10"), text
    assert has_row(text, "queue: waiting", "4 (oldest 12s)"), text
    assert has_row(text, "requests waiting for a batch", "6"), text


def test_spend_today_against_each_cap_named_as_configured() -> None:
    text = text_of(render(snapshot()))
    assert has_row(text, "spend today", "$4.500"), text
    assert has_row(text, "[budgets] daily_usd", "$4.500 of $5.00"), text
    assert re.search(r"\[budgets\] daily_usd .* 90%", text), text
    assert re.search(r"\[budgets\.operations\.evals\] daily_usd .* 120%", text), text


def test_model_mix_and_savings_by_source_of_the_callers_calls() -> None:
    text = text_of(render(snapshot()))
    # Most spent first: gpt-4.1 (2 calls, $2) before gpt-4o-mini (8 calls, $0.50).
    assert has_row(text, "gpt-4.1", "2", "20%", "$2.000"), text
    assert has_row(text, "gpt-4o-mini", "8", "80%", "$0.500"), text
    assert text.index("gpt-4.1 ") < text.index("gpt-4o-mini")
    assert has_row(text, "tier", "$0.750"), text
    assert has_row(text, "cache", "$0.500"), text
    assert "dedup" not in text  # nothing saved that way: not a line


def test_cache_jobs_batches_and_breakers() -> None:
    text = text_of(render(snapshot()))
    assert has_row(text, "hit rate", "25.0%"), text
    assert has_row(text, "hits / misses", "3 / 9"), text
    assert has_row(text, "job_123", "31/40"), text
    assert "in 1h " in text
    assert has_row(text, "batch_abc", "gpt-4.1-mini", "in_progress", "30", "1", "40"), text
    assert "batches: 1 open, 2 finished, 6 requests waiting to be batched" in text
    assert has_row(text, "openai", "flex", "open", "5", "1", "25 s", "503 from upstream"), text


def test_an_idle_daemon_says_so_rather_than_showing_empty_tables() -> None:
    quiet = status(batches={"open": [], "finished": 0})
    quiet["dispatcher"]["breakers"] = []
    quiet["ledger"]["budgets"] = []
    text = text_of(render(snapshot(status=quiet, today={"total": {}, "rows": []}, jobs=[])))
    assert "no calls today" in text
    assert "no daily caps set" in text
    assert "none has carried a call yet" in text
    assert "your jobs" not in text
    assert "batches:" not in text


def test_a_failed_refresh_is_said_above_the_last_figures() -> None:
    text = text_of(render(snapshot(), problem="cannot reach the daemon at /x"))
    assert "cannot reach the daemon at /x; showing what the daemon said at" in text
    assert has_row(text, "spend today", "$4.500"), text


def test_mix_sums_rows_by_model_or_tier_most_spent_first() -> None:
    rows = TODAY["rows"]
    assert [(line.name, line.requests) for line in mix(rows, "model")] == [
        ("gpt-4.1", 2), ("gpt-4o-mini", 8)]
    assert [line.name for line in mix(rows, "tier")] == ["flex", "standard", "cache"]
