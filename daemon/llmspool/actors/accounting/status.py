"""The ledger's answers to ``StatusQuery`` (its status snapshot: spend, savings,
reservations, the daily caps and how full they are, warnings, commits, and in a shared store
the fleet of daemons) and to
``LedgerEntriesQuery`` (the same, with the recent entries).

Answered after a flush, so what the asker was told is settled is in the store when it reads.
"""

from __future__ import annotations

from typing import Any

from llmspool.actors.accounting.budgets import Budgets
from llmspool.actors.accounting.caps import picodollars
from llmspool.actors.accounting.commits import GroupCommit
from llmspool.core.pricing import usd
from llmspool.messages import (
    BudgetStatus,
    LedgerEntries,
    LedgerEntriesQuery,
    LedgerStatus,
    StatusQuery,
    answer,
)
from llmspool.store import fleet
from llmspool.store import ledger as ledger_sql
from llmspool.store.ledger import LedgerConnection


async def answer_query(query: StatusQuery[LedgerStatus] | LedgerEntriesQuery, budgets: Budgets,
                       group: GroupCommit, database: LedgerConnection) -> None:
    await group.flush()  # what the asker was told is settled is in the store when it reads
    if database.shared:  # the fleet's spend, not only what this daemon saw
        budgets.observe_usage(await database.run(ledger_sql.usage_on, budgets.day))
    unknown = await database.run(ledger_sql.unknown_outcomes_on, budgets.day)
    status = _status(budgets, group, unknown)
    if database.checkpoints is not None:
        status["wal_checkpoints"] = database.checkpoints.made
    if database.shared:
        status["fleet"] = await database.run(fleet.fleet_report)
    if isinstance(query, LedgerEntriesQuery):
        recent = await database.run(ledger_sql.recent_entries, query.limit, query.everyone,
                                    query.uid)
        entries: LedgerEntries = {**status, "entries": _in_usd(recent)}
        answer(query.reply, entries)
    else:
        answer(query.reply, status)


def _status(budgets: Budgets, group: GroupCommit, unknown: tuple[int, int]) -> LedgerStatus:
    unknown_calls, unknown_cost = unknown
    return {
        "day": budgets.day,
        "spend_today_usd": usd(budgets.spent[("day", "")]),
        "saved_today_usd": usd(budgets.saved_today),
        "calls_today": budgets.calls_today,
        "unpriced_calls_today": budgets.unpriced_today,
        "reserved_usd": usd(sum(e for e, _s in budgets.reservations.values())),
        "calls_reserved": len(budgets.reservations),
        "refused_by_budget": budgets.refused,
        "unknown_outcome_today": unknown_calls,
        "unknown_outcome_today_usd": usd(unknown_cost),
        "commits": group.commits,
        "budgets": budget_report(budgets),
        "warnings": list(budgets.warnings),
    }


def _in_usd(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for entry in entries:  # the columns, with costs in USD and the flag a boolean
        cost = entry.pop("cost_picodollars")
        standard = entry.pop("standard_cost_picodollars")
        entry["cost_usd"] = None if cost is None else usd(cost)
        entry["standard_cost_usd"] = None if standard is None else usd(standard)
        entry["usage_estimated"] = bool(entry["usage_estimated"])
    return entries


def budget_report(budgets: Budgets) -> list[BudgetStatus]:
    config = budgets.caps.config
    report: list[BudgetStatus] = []
    for scope, value, name in (
        (("day", ""), config.daily_usd, "[budgets] daily_usd"),
        *((("operation", op), cap.daily_usd, f"[budgets.operations.{op}] daily_usd")
          for op, cap in config.operations.items()),
        *((("provider", p), cap.daily_usd, f"[budgets.providers.{p}] daily_usd")
          for p, cap in config.providers.items()),
    ):
        if value is None:
            continue
        limit = picodollars(value)
        report.append({
            "cap": name, "limit_usd": value, "spent_usd": usd(budgets.spent[scope]),
            "reserved_usd": usd(budgets.reserved[scope]),
            "fraction": round(budgets.spent[scope] / limit, 4) if limit else None,
        })
    return report
