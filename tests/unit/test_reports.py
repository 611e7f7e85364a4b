"""Cost reports over a real, migrated store, against totals computed by hand, on each backend
(SQLite, PostgreSQL): the same figures, exactly, from both.

The entries are written with SQL into ``ledger_entries``, as the ledger writes them, so the
rollup the reports read is kept by the migration's trigger, exactly as in the daemon.
"""

from __future__ import annotations

import calendar
import io
import pwd
from typing import Any

import anyio
import pytest
from llmspool.store.backend import StoreLocation
from llmspool.store.connect import connect
from llmspool.store.reports import (
    cost_report,
    open_reader,
    parse_day,
    parse_dimensions,
    parse_since,
    write_csv,
)

PD = 10**12  # picodollars per USD
ROOT = 0
NOBODY_UID = 3_999_999  # no account has it: the user is shown as the number

_INSERT = """
INSERT INTO ledger_entries (
    request_id, day, started_at, finished_at, provider, model, endpoint, tier, operation, uid,
    status, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, usage_estimated,
    cost_picodollars, standard_cost_picodollars, session, flag, saving_source
) VALUES (?, ?, 0, 0, ?, ?, '/v1/chat/completions', ?, ?, ?, 200, ?, ?, ?, 0, ?, ?, ?, NULL, ?, ?)
ON CONFLICT DO NOTHING
"""

# (request_id, day, provider, model, tier, operation, uid, input, cached, output, estimated,
#  cost, standard cost, flag, saving source)
ENTRIES: list[tuple[Any, ...]] = [
    # Before the reports' window (since 2026-03-01).
    ("r0", "2026-02-20", "openai", "gpt-5-mini", "standard", "summarise", ROOT,
     1000, 0, 100, 0, 5_000_000, 5_000_000, None, None),
    ("r1", "2026-03-01", "openai", "gpt-5-mini", "standard", "summarise", ROOT,
     100, 10, 50, 0, 1_000_000, 1_000_000, None, None),
    ("r2", "2026-03-01", "openai", "gpt-5-mini", "flex", "summarise", ROOT,
     200, 0, 20, 0, 500_000, 1_000_000, None, "tier"),
    # Written before sources were recorded: a batch discount, so a tier saving.
    ("r3", "2026-03-02", "openai", "gpt-5-mini", "batch", None, None,
     300, 30, 30, 0, 2_000_000, 4_000_000, None, None),
    ("r4", "2026-03-02", "openai", "gpt-5", "standard", "classify", NOBODY_UID,
     400, 0, 40, 0, 0, 3_000_000, None, "cache"),
    ("r5", "2026-03-02", "openai", "gpt-5", "standard", "classify", NOBODY_UID,
     400, 0, 40, 0, 0, 3_000_000, None, "dedup"),
    # No price known: counted as a request, not in spend or savings.
    ("r6", "2026-03-03", "ollama", "llama3", "standard", "classify", ROOT,
     600, 0, 60, 0, None, None, None, None),
    ("r7", "2026-03-03", "openai", "gpt-5-mini", "standard", "classify", ROOT,
     700, 0, 70, 1, 700_000, 900_000, None, "routing"),
    ("r8", "2026-03-03", "openai", "gpt-5", "standard", "x", ROOT,
     800, 80, 80, 0, 100, 100, "unknown_tier", None),
    # The same request id again (a retried write): ignored, counted once.
    ("r1", "2026-03-01", "openai", "gpt-5-mini", "standard", "summarise", ROOT,
     9999, 0, 9999, 0, 9_999_999, 9_999_999, None, None),
]


def _write(location: StoreLocation, sql: str, rows: list[tuple[Any, ...]]) -> None:
    connection = connect(location)
    try:
        connection.execute("BEGIN IMMEDIATE")
        for row in rows:  # one at a time: a repeated request id is ignored, as the ledger's
            connection.execute(sql, row)
        connection.execute("COMMIT")
    finally:
        connection.close()


@pytest.fixture
def store(store_location: StoreLocation) -> StoreLocation:
    """A store (of each backend in turn) holding ``ENTRIES``."""
    _write(store_location, _INSERT, ENTRIES)
    return store_location


def report(store: StoreLocation, by: list[str], since: str | None = "2026-03-01",
           until: str | None = None, limit: int | None = None) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        async with open_reader(store) as connection:
            return await cost_report(connection, by=by, since_day=since, until_day=until,
                                     limit=limit)

    return anyio.run(main)


def usd(picodollars: int) -> float:
    return picodollars / PD


def test_total_matches_hand_computed_sums(store: StoreLocation) -> None:
    result = report(store, [])
    assert result["since"] == "2026-03-01" and result["by"] == [] and result["rows"] == []
    assert result["total"] == {
        # r1 + r2 + r3 + r7 + r8 (r4, r5 free, r6 unpriced; r0 before since; r1 once).
        "spend_usd": usd(1_000_000 + 500_000 + 2_000_000 + 700_000 + 100),
        "saved_usd": usd(500_000 + 2_000_000 + 3_000_000 + 3_000_000 + 200_000),
        "saved_by_source": {
            "tier": usd(500_000 + 2_000_000),
            "cache": usd(3_000_000),
            "dedup": usd(3_000_000),
            "routing": usd(200_000),
        },
        "standard_cost_usd": usd(1_000_000 + 1_000_000 + 4_000_000 + 3_000_000 * 2 + 900_000
                                 + 100),
        "requests": 8,
        "input_tokens": 100 + 200 + 300 + 400 + 400 + 600 + 700 + 800,
        "cached_input_tokens": 10 + 30 + 80,
        "output_tokens": 50 + 20 + 30 + 40 + 40 + 60 + 70 + 80,
        "unpriced_requests": 1,  # r6
        "estimated_requests": 2,  # r7 (estimated usage), r8 (flagged)
        "late_requests": 0,  # none had a deadline
        "unknown_outcome_requests": 0,  # no crash left a call unsettled
        "unknown_outcome_usd": 0.0,
    }


def test_calls_of_unknown_outcome_are_counted_and_costed(store: StoreLocation) -> None:
    # A call in flight at a crash: billed at its reservation, flagged, in spend and its count.
    unknown = ("u1", "2026-03-03", "openai", "gpt-5", "standard", None, ROOT,
               0, 0, 0, 1, 4_000_000, 4_000_000, "unknown_outcome", None)
    _write(store, _INSERT, [unknown])
    total = report(store, ["day"])["total"]
    assert total["unknown_outcome_requests"] == 1
    assert total["unknown_outcome_usd"] == usd(4_000_000)
    assert total["spend_usd"] == usd(1_000_000 + 500_000 + 2_000_000 + 700_000 + 100
                                     + 4_000_000)


def test_rows_by_tier_sorted_by_spend(store: StoreLocation) -> None:
    rows = report(store, ["tier"])["rows"]
    assert [(r["tier"], r["spend_usd"], r["saved_usd"], r["requests"]) for r in rows] == [
        ("batch", usd(2_000_000), usd(2_000_000), 1),
        ("standard", usd(1_000_000 + 700_000 + 100), usd(3_000_000 * 2 + 200_000), 6),
        ("flex", usd(500_000), usd(500_000), 1),
    ]
    flex = rows[2]
    assert flex["saved_by_source"] == {"tier": usd(500_000), "cache": 0.0, "dedup": 0.0,
                                       "routing": 0.0}
    standard = rows[1]
    assert standard["saved_by_source"]["cache"] == usd(3_000_000)
    assert standard["unpriced_requests"] == 1 and standard["estimated_requests"] == 2


def test_limit_keeps_the_largest_rows_and_the_whole_total(store: StoreLocation) -> None:
    full = report(store, ["tier"])
    limited = report(store, ["tier"], limit=2)
    assert [r["tier"] for r in limited["rows"]] == ["batch", "standard"]
    assert limited["rows"] == full["rows"][:2]
    assert limited["row_count"] == full["row_count"] == 3
    assert limited["total"] == full["total"]


def test_rows_by_user_name_the_account(store: StoreLocation) -> None:
    rows = report(store, ["user"])["rows"]
    root = pwd.getpwuid(ROOT).pw_name
    assert [(r["user"], r["uid"], r["spend_usd"], r["requests"]) for r in rows] == [
        (root, ROOT, usd(1_000_000 + 500_000 + 700_000 + 100), 5),
        ("unknown", None, usd(2_000_000), 1),
        (str(NOBODY_UID), NOBODY_UID, 0.0, 2),
    ]


def test_rows_by_saving_source(store: StoreLocation) -> None:
    rows = report(store, ["source"])["rows"]
    assert [(r["source"], r["spend_usd"], r["saved_usd"]) for r in rows] == [
        ("tier", usd(2_500_000), usd(2_500_000)),
        (None, usd(1_000_100), 0.0),
        ("routing", usd(700_000), usd(200_000)),
        ("cache", 0.0, usd(3_000_000)),  # equal spend: ordered by name
        ("dedup", 0.0, usd(3_000_000)),
    ]


def test_rows_by_day_and_operation_with_since_and_until(store: StoreLocation) -> None:
    result = report(store, ["day", "operation"], since="2026-03-02", until="2026-03-02")
    assert (result["since"], result["until"]) == ("2026-03-02", "2026-03-02")
    assert [(r["day"], r["operation"], r["spend_usd"], r["requests"])
            for r in result["rows"]] == [
        ("2026-03-02", None, usd(2_000_000), 1),
        ("2026-03-02", "classify", 0.0, 2),
    ]
    assert result["total"]["requests"] == 3


def test_since_all_includes_every_day(store: StoreLocation) -> None:
    result = report(store, ["day"], since=None)
    spend = {r["day"]: r["spend_usd"] for r in result["rows"]}
    assert spend == {
        "2026-02-20": usd(5_000_000),
        "2026-03-01": usd(1_500_000),
        "2026-03-02": usd(2_000_000),
        "2026-03-03": usd(700_100),
    }
    assert result["total"]["requests"] == 9


def test_many_dimensions_keep_savings_split_by_source(store: StoreLocation) -> None:
    result = report(store, ["day", "provider", "model", "tier", "operation", "user"])
    # Every entry since 2026-03-01 is a row of its own, but r4 and r5, which differ only in
    # their saving source: their savings stay split by source in their one row.
    assert len(result["rows"]) == 7
    assert sum(r["requests"] for r in result["rows"]) == result["total"]["requests"]
    free = next(r for r in result["rows"] if r["model"] == "gpt-5" and r["requests"] == 2)
    assert free["saved_by_source"] == {"tier": 0.0, "cache": usd(3_000_000),
                                       "dedup": usd(3_000_000), "routing": 0.0}
    first = result["rows"][0]
    assert (first["day"], first["provider"], first["model"], first["tier"], first["operation"],
            first["user"]) == ("2026-03-02", "openai", "gpt-5-mini", "batch", None, "unknown")


def test_a_repeated_request_id_is_counted_once(store: StoreLocation) -> None:
    rows = report(store, ["day", "tier"], until="2026-03-01")["rows"]
    standard = next(r for r in rows if r["tier"] == "standard")
    assert (standard["requests"], standard["spend_usd"], standard["input_tokens"]) == (
        1, usd(1_000_000), 100)


def test_reader_is_read_only(store_location: StoreLocation) -> None:
    async def main() -> None:
        async with open_reader(store_location) as connection:
            # SQLite: "attempt to write a readonly database"; PostgreSQL: "cannot execute
            # DELETE in a read-only transaction".
            with pytest.raises(Exception, match=r"readonly|read-only"):
                await connection.execute("DELETE FROM ledger_rollup")

    anyio.run(main)


def test_unknown_dimension_is_refused(store: StoreLocation) -> None:
    with pytest.raises(ValueError, match="unknown report dimensions"):
        report(store, ["colour"])


def test_parse_dimensions() -> None:
    assert parse_dimensions("day, Tier,day,,model") == ["day", "tier", "model"]
    assert parse_dimensions("") == []
    with pytest.raises(ValueError, match=r"'colour'.*day, provider, model"):
        parse_dimensions("day,colour")


def test_parse_since_and_until() -> None:
    now = calendar.timegm((2026, 3, 8, 12, 0, 0))  # 2026-03-08 12:00 UTC
    assert parse_since("7d", now) == "2026-03-01"
    assert parse_since("24h", now) == "2026-03-07"
    assert parse_since("13h", now) == "2026-03-07"
    assert parse_since("11h", now) == "2026-03-08"
    assert parse_since("2026-02-28", now) == "2026-02-28"
    assert parse_since("all", now) is None
    for bad in ("yesterday", "7", "2026-02-30", "-7d", ""):
        with pytest.raises(ValueError, match="expected"):
            parse_since(bad, now)
    assert parse_day("2026-03-01") == "2026-03-01"
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_day("03/01/2026")


def test_csv_has_a_line_per_row_and_plain_decimals(store: StoreLocation) -> None:
    result = report(store, ["tier", "user"])
    text = io.StringIO()
    write_csv(result, text)
    lines = text.getvalue().splitlines()
    assert lines[0] == (
        "tier,user,uid,spend_usd,saved_usd,saved_tier_usd,saved_cache_usd,saved_dedup_usd,"
        "saved_routing_usd,standard_cost_usd,requests,input_tokens,cached_input_tokens,"
        "output_tokens,unpriced_requests,estimated_requests,late_requests"
    )
    assert lines[1] == (
        "batch,unknown,,0.000002,0.000002,0.000002,0,0,0,0.000004,1,300,30,30,0,0,0")
    assert len(lines) == 1 + len(result["rows"])

    total = io.StringIO()
    write_csv(report(store, []), total)
    header, only = total.getvalue().splitlines()
    assert header.startswith("spend_usd,saved_usd,")
    assert only.startswith("0.0000042001,0.0000087,0.0000025,0.000003,0.000003,0.0000002,")


def test_spend_and_late_requests_by_deadline_class(store_location: StoreLocation) -> None:
    # (request id, seconds its caller gave it or None, late, cost)
    calls = [("i1", None, 0, 100), ("i2", 30.0, 1, 200), ("j1", 7200.0, 0, 50),
             ("j2", 7200.0, 1, 50), ("j3", 86400.0, 0, 25), ("j4", 3 * 86400.0, 0, 10)]
    _write(store_location,
           "INSERT INTO ledger_entries (request_id, day, started_at, finished_at, "
           "provider, model, endpoint, tier, status, input_tokens, cached_input_tokens, "
           "output_tokens, reasoning_tokens, usage_estimated, cost_picodollars, "
           "standard_cost_picodollars, deadline_window, late) VALUES (?, '2026-03-02', 0, "
           "0, 'openai', 'gpt-5-mini', '/v1/chat/completions', 'standard', 200, 1, 0, 1, "
           "0, 0, ?, ?, ?, ?)",
           [(rid, cost, cost, window, late) for rid, window, late, cost in calls])
    result = report(store_location, ["deadline"])
    rows = {row["deadline"]: (row["requests"], row["late_requests"], row["spend_usd"])
            for row in result["rows"]}
    assert rows == {"none": (1, 0, usd(100)), "<=1m": (1, 1, usd(200)),
                    "<=2h": (2, 1, usd(100)), "<=24h": (1, 0, usd(25)), ">24h": (1, 0, usd(10))}
    assert result["total"]["late_requests"] == 2


def test_rows_by_daemon_of_a_shared_store(store: StoreLocation) -> None:
    # Entries written before daemons had names have none (shown as None).
    _write(store, _INSERT.replace("saving_source\n)", "saving_source, daemon\n)").replace(
        "?, ?)\nON", "?, ?, ?)\nON"), [
        ("d1", "2026-03-04", "openai", "gpt-5-mini", "standard", None, ROOT,
         10, 0, 1, 0, 4_000_000, 4_000_000, None, None, "host-a"),
        ("d2", "2026-03-04", "openai", "gpt-5-mini", "standard", None, ROOT,
         10, 0, 1, 0, 3_000_000, 3_000_000, None, None, "host-b"),
        ("d3", "2026-03-04", "openai", "gpt-5-mini", "standard", None, ROOT,
         10, 0, 1, 0, 3_000_000, 3_000_000, None, None, "host-b"),
    ])
    rows = report(store, ["daemon"])["rows"]
    assert [(r["daemon"], r["spend_usd"], r["requests"]) for r in rows] == [
        ("host-b", usd(6_000_000), 2),
        (None, usd(1_000_000 + 500_000 + 2_000_000 + 700_000 + 100), 8),
        ("host-a", usd(4_000_000), 1),
    ]
