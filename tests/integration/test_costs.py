"""``llmspool costs`` and ``GET /v1/ledger?by=...`` end to end: calls through the official
client on standard and flex, then the report, whose totals must be the sum of the costs the
calls were answered with, and whose flex saving must equal the flex cost (flex is half price)."""

from __future__ import annotations

import csv
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.processes import Daemon, openai_client, python_command, unix_request

# (model, service tier or None, how many calls)
CALLS = (("gpt-5-mini", None, 2), ("gpt-4o-mini", None, 1), ("gpt-5-mini", "flex", 2))
MONEY = 1e-9  # the cost header has 10 decimals; the report is exact to the picodollar


@pytest.fixture
def answered(daemon: Daemon) -> Iterator[dict[tuple[str, str], list[float]]]:
    """The calls of ``CALLS``; the costs their headers said, by (tier, model)."""
    client = openai_client(daemon.socket_path)
    costs: dict[tuple[str, str], list[float]] = {}
    for model, service_tier, count in CALLS:
        for index in range(count):
            options: dict[str, Any] = {"service_tier": service_tier} if service_tier else {}
            raw = client.chat.completions.with_raw_response.create(
                model=model,
                messages=[{"role": "user", "content": f"Count the spools, take {index}."}],
                max_completion_tokens=16,
                **options,
            )
            tier = raw.headers["x-llmspool-tier"]
            costs.setdefault((tier, model), []).append(float(raw.headers["x-llmspool-cost-usd"]))
    assert set(costs) == {("standard", "gpt-5-mini"), ("standard", "gpt-4o-mini"),
                          ("flex", "gpt-5-mini")}
    yield costs


def costs_command(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**daemon.env, "COLUMNS": "200"}
    return subprocess.run(python_command("costs", *args), env=env, capture_output=True,
                          text=True, timeout=30)


def test_json_report_totals_are_the_costs_the_calls_returned(
    daemon: Daemon, answered: dict[tuple[str, str], list[float]]
) -> None:
    done = costs_command(daemon, "--by", "tier,model", "--json")
    assert done.returncode == 0, done.stderr
    report = orjson.loads(done.stdout)
    total = report["total"]
    spent = sum(sum(costs) for costs in answered.values())
    flex_cost = sum(answered["flex", "gpt-5-mini"])
    assert report["by"] == ["tier", "model"]
    assert total["requests"] == 5
    assert total["spend_usd"] == pytest.approx(spent, abs=MONEY)
    assert total["saved_usd"] == pytest.approx(flex_cost, abs=MONEY)
    assert total["saved_by_source"]["tier"] == pytest.approx(flex_cost, abs=MONEY)
    assert total["saved_by_source"]["cache"] == total["saved_by_source"]["dedup"] == 0
    assert total["input_tokens"] > 0 and total["output_tokens"] > 0
    assert total["unpriced_requests"] == total["estimated_requests"] == 0

    rows = {(row["tier"], row["model"]): row for row in report["rows"]}
    assert set(rows) == set(answered)
    for key, costs in answered.items():
        assert rows[key]["requests"] == len(costs)
        assert rows[key]["spend_usd"] == pytest.approx(sum(costs), abs=MONEY)
    flex = rows["flex", "gpt-5-mini"]
    assert flex["saved_usd"] == pytest.approx(flex["spend_usd"], abs=MONEY)
    assert flex["standard_cost_usd"] == pytest.approx(2 * flex["spend_usd"], abs=MONEY)
    assert rows["standard", "gpt-5-mini"]["saved_usd"] == 0
    spends = [row["spend_usd"] for row in report["rows"]]
    assert spends == sorted(spends, reverse=True)


def test_csv_and_table_show_the_same_report(
    daemon: Daemon, answered: dict[tuple[str, str], list[float]]
) -> None:
    done = costs_command(daemon, "--by", "tier,model", "--csv")
    assert done.returncode == 0, done.stderr
    lines = list(csv.DictReader(io.StringIO(done.stdout)))
    by_key = {(line["tier"], line["model"]): line for line in lines}
    assert set(by_key) == set(answered)
    for key, costs in answered.items():
        assert int(by_key[key]["requests"]) == len(costs)
        assert float(by_key[key]["spend_usd"]) == pytest.approx(sum(costs), abs=MONEY)
    assert "e-" not in done.stdout  # plain decimals, never 1e-05
    flex = by_key["flex", "gpt-5-mini"]
    assert float(flex["saved_tier_usd"]) == pytest.approx(float(flex["spend_usd"]), abs=MONEY)

    done = costs_command(daemon, "--by", "tier,model", "--since", "1d")
    assert done.returncode == 0, done.stderr
    table = done.stdout
    spent = sum(sum(costs) for costs in answered.values())
    total_line = next(line for line in table.splitlines() if line.strip().startswith("total"))
    cells = total_line.split()
    spend_cell = next(cell for cell in cells if cell.startswith("$"))
    decimals = len(spend_cell.partition(".")[2])
    assert decimals >= 6  # enough to tell fractions of a cent apart
    assert float(spend_cell[1:].replace(",", "")) == pytest.approx(spent, abs=10**-decimals)
    assert cells[1] == "5"  # total, (blank model), requests
    for tier, model in answered:
        assert any(tier in line and model in line for line in table.splitlines())
    assert "all savings from tier" in table  # one source: no column per source

    done = costs_command(daemon, "--by", "tier,model", "--limit", "1")
    assert done.returncode == 0, done.stderr
    assert "the 1 of 3 rows that spent most" in done.stdout
    total_line = next(line for line in done.stdout.splitlines()
                      if line.strip().startswith("total"))
    assert total_line.split()[1] == "5"  # the total still counts every row


def test_ledger_route_serves_the_report(
    daemon: Daemon, answered: dict[tuple[str, str], list[float]]
) -> None:
    status, report = daemon.get("/v1/ledger?by=tier&since=7d")
    assert status == 200
    spend = {row["tier"]: row["spend_usd"] for row in report["rows"]}
    assert spend == pytest.approx({
        "standard": sum(answered["standard", "gpt-5-mini"] + answered["standard", "gpt-4o-mini"]),
        "flex": sum(answered["flex", "gpt-5-mini"]),
    }, abs=MONEY)
    assert report["rows"][0]["saved_by_source"].keys() == {"tier", "cache", "dedup", "routing"}

    status, only_total = daemon.get("/v1/ledger?by=&since=all")
    assert status == 200 and only_total["rows"] == []
    assert only_total["total"] == report["total"]

    status, body = daemon.get("/v1/ledger?by=user&format=csv")
    assert status == 200
    assert isinstance(body, bytes)
    header, line = body.decode().splitlines()
    assert header.startswith("user,uid,spend_usd,saved_usd,")
    assert line.split(",")[1] == str(os.getuid())

    # Without report parameters: today's totals and the entries, as before.
    status, ledger = daemon.get("/v1/ledger?limit=2")
    assert status == 200
    assert len(ledger["entries"]) == 2 and ledger["calls_today"] == 5


@pytest.mark.parametrize(("query", "param"), [
    ("by=colour", "by"),
    ("since=yesterday", "since"),
    ("since=2026-02-30", "since"),
    ("until=tomorrow", "until"),
    ("since=2026-03-02&until=2026-03-01", "until"),
    ("by=day&format=xml", "format"),
    ("limit=0", "limit"),
    ("by=tier&limit=0", "limit"),
    ("by=tier&limit=many", "limit"),
])
def test_bad_report_parameters_are_400_naming_the_param(
    daemon: Daemon, query: str, param: str
) -> None:
    status, body = unix_request(daemon.socket_path, "GET", f"/v1/ledger?{query}")
    assert status == 400
    assert body["error"]["param"] == param
    assert body["error"]["type"] == "invalid_request_error"


def test_cli_errors(daemon: Daemon, tmp_path: Path) -> None:
    done = costs_command(daemon, "--by", "day,colour")
    assert done.returncode == 2 and "colour" in done.stderr
    done = costs_command(daemon, "--since", "last week")
    assert done.returncode == 2 and "'last week'" in done.stderr
    missing = tmp_path / "nowhere.sock"
    done = costs_command(daemon, "--socket", str(missing))
    assert done.returncode == 1
    assert str(missing) in done.stderr and "is it running" in done.stderr
