"""Cost reports: what was spent and saved, grouped by day, provider, model, tier, operation,
calling user or saving source.

Reports read only ``ledger_rollup`` (migration 0003), the per-day totals a trigger keeps exact
as each ledger entry is written, so a report over a million entries reads a few thousand rows.
They read through a read-only connection of their own (``open_reader``), to the store on
either backend: in SQLite's WAL mode, as in PostgreSQL, a reader never waits for the ledger's
commits, nor they for it. The SQL is one text for both, so both give the same figures.

Money stays integer picodollars while it is summed and becomes USD once, at the end. Saved is
what the calls would have cost at standard list price less what they cost, never negative for a
rollup row; it is split by where it came from (``SOURCES``). Entries written before sources
were recorded carry none: their saving can only be the tier discount, and is counted as "tier".

This module imports nothing heavy at import time (the store's drivers only when a reader is
opened), so that the command line can use its parsers and CSV writer and still start fast.
"""

from __future__ import annotations

import csv
import datetime as dt
import pwd
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import IO, TYPE_CHECKING, Any

import anyio

from llmspool.core.pricing import usd
from llmspool.core.units import parse_duration

if TYPE_CHECKING:
    from llmspool.store.backend import StoreLocation
    from llmspool.store.connections import AsyncConnection

# What a report can group by, in the order a user would most often read them.
DIMENSIONS = ("day", "provider", "model", "tier", "operation", "user", "source", "deadline",
              "daemon")
# Where a saving comes from: the tier discount (batch, flex), a cache hit or a deduplicated
# request (free), or routing to a cheaper model or provider.
SOURCES = ("tier", "cache", "dedup", "routing")

# A rollup row's saving source; an unlabelled row with a saving predates labels (see above).
_SOURCE_SQL = (
    "CASE WHEN saving_source <> '' THEN saving_source "
    "WHEN standard_cost_picodollars > cost_picodollars THEN 'tier' ELSE '' END"
)
_DIMENSION_SQL = {
    "day": "day",
    "provider": "provider",
    "model": "model",
    "tier": "tier",
    "operation": "operation",
    "user": "uid",
    "source": _SOURCE_SQL,
    # The class of the time its caller gave it: none, <=1m, <=15m, <=2h, <=24h, >24h (migration
    # 0007; '' for calls recorded before deadlines were).
    "deadline": "deadline",
    # The daemon of a shared store that made the call ([store] name; '' on SQLite, and for
    # calls recorded before daemons had names: migrations 0013 and postgresql/0005).
    "daemon": "daemon",
}
_SUMS_SQL = (
    "SUM(calls), SUM(input_tokens), SUM(cached_input_tokens), SUM(output_tokens), "
    "SUM(cost_picodollars), SUM(standard_cost_picodollars), "
    # A saving is never negative, except the cache's: what its near-duplicate matching spent
    # on embeddings (recorded with no saving of its own) is taken off what it saved.
    "SUM(CASE WHEN saving_source IN ('cache', 'dedup') "
    "THEN standard_cost_picodollars - cost_picodollars "
    "WHEN standard_cost_picodollars > cost_picodollars "
    "THEN standard_cost_picodollars - cost_picodollars ELSE 0 END), "
    "SUM(unpriced_calls), SUM(estimated_calls), SUM(late_calls)"
)
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
UNKNOWN_USER = "unknown"
_ALL = object()  # no user filter


# --- parsing what a user asks for ---------------------------------------------------------------


def parse_dimensions(text: str) -> list[str]:
    """The dimensions in ``"day,tier,model"``, in order, each once; ``""`` is none (the total).

    ``ValueError`` names the unknown one and the accepted names.
    """
    chosen: list[str] = []
    for raw in text.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        if name not in _DIMENSION_SQL:
            raise ValueError(
                f"cannot group by {raw.strip()!r}; choose from {', '.join(DIMENSIONS)} "
                "(comma-separated, e.g. 'day,tier')"
            )
        if name not in chosen:
            chosen.append(name)
    return chosen


def parse_day(text: str) -> str:
    """A UTC date ``YYYY-MM-DD``, checked to be a real date."""
    text = text.strip()
    if _DAY.fullmatch(text):
        try:
            dt.date.fromisoformat(text)
        except ValueError:
            pass
        else:
            return text
    raise ValueError(f"expected a date like '2026-03-01' (YYYY-MM-DD, UTC), got {text!r}")


def parse_since(text: str, now: float) -> str | None:
    """The first UTC day a report covers: a duration back from ``now`` (``"7d"``, ``"24h"``,
    ``"1h30m"``: the UTC day that long ago), a date ``YYYY-MM-DD``, or ``"all"`` (None)."""
    text = text.strip()
    if text.lower() == "all":
        return None
    if _DAY.fullmatch(text):
        return parse_day(text)
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise ValueError(
            f"expected a duration back from now like '7d' or '24h', a date like '2026-03-01' "
            f"(YYYY-MM-DD, UTC) or 'all', got {text!r}"
        ) from None
    return utc_day(now - seconds)


def utc_day(unix_seconds: float) -> str:
    """The UTC date of a moment, as the ledger writes it."""
    return time.strftime("%Y-%m-%d", time.gmtime(unix_seconds))


# --- reading ----------------------------------------------------------------------------------


@asynccontextmanager
async def open_reader(store: StoreLocation) -> AsyncIterator[AsyncConnection]:
    """A read-only connection to ``store``, closed on leaving the block."""
    from llmspool.store.connect import connected_async

    async with connected_async(store, read_only=True) as connection:
        yield connection


@dataclass(slots=True)
class _Sums:
    """Integer sums for one row of a report (or its total)."""

    calls: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    cost: int = 0
    standard_cost: int = 0
    saved: int = 0
    unpriced: int = 0
    estimated: int = 0
    late: int = 0
    saved_by_source: dict[str, int] = field(default_factory=dict)

    def add(self, source: str, sums: Sequence[Any]) -> None:
        (calls, input_tokens, cached, output, cost, standard, saved, unpriced, estimated,
         late) = sums
        self.calls += calls
        self.input_tokens += input_tokens
        self.cached_input_tokens += cached
        self.output_tokens += output
        self.cost += cost
        self.standard_cost += standard
        self.saved += saved
        self.unpriced += unpriced
        self.estimated += estimated
        self.late += late
        if saved:
            self.saved_by_source[source] = self.saved_by_source.get(source, 0) + saved

    def merge(self, other: _Sums) -> None:
        self.calls += other.calls
        self.input_tokens += other.input_tokens
        self.cached_input_tokens += other.cached_input_tokens
        self.output_tokens += other.output_tokens
        self.cost += other.cost
        self.standard_cost += other.standard_cost
        self.saved += other.saved
        self.unpriced += other.unpriced
        self.estimated += other.estimated
        self.late += other.late
        for source, saved in other.saved_by_source.items():
            self.saved_by_source[source] = self.saved_by_source.get(source, 0) + saved

    def to_json(self) -> dict[str, Any]:
        by_source = dict.fromkeys(SOURCES, 0)
        for source, saved in sorted(self.saved_by_source.items()):
            by_source[source] = by_source.get(source, 0) + saved
        return {
            "spend_usd": usd(self.cost),
            "saved_usd": usd(self.saved),
            "saved_by_source": {source: usd(saved) for source, saved in by_source.items()},
            "standard_cost_usd": usd(self.standard_cost),
            "requests": self.calls,
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "output_tokens": self.output_tokens,
            "unpriced_requests": self.unpriced,
            "estimated_requests": self.estimated,
            "late_requests": self.late,
        }


async def cost_report(
    connection: AsyncConnection,
    *,
    by: Sequence[str],
    since_day: str | None,
    until_day: str | None = None,
    limit: int | None = None,
    user_name: Callable[[int], str] | None = None,
    everyone: bool = True,
    uid: int | None = None,
) -> dict[str, Any]:
    """Spend, savings, requests and tokens from ``since_day`` to ``until_day`` (UTC dates,
    inclusive; None: unbounded), grouped by the dimensions ``by`` (see ``DIMENSIONS``).

    ``{"since", "until", "by", "total": {...}, "row_count", "rows": [{<dimension values>,
    ...}]}``; rows are sorted by spend, largest first, then by their dimension values. With no
    dimensions there are no rows, only the total. ``limit`` keeps only that many rows (the
    largest spend); the total and ``row_count`` still count them all. ``user_name`` turns a uid
    into the ``user`` value (default: the local account's name, else the number;
    ``"unknown"`` for calls of unknown origin). Without ``everyone``, only the calls of ``uid``
    (None: of unknown origin) count.
    """
    dimensions = list(by)
    unknown = [name for name in dimensions if name not in _DIMENSION_SQL]
    if unknown:
        raise ValueError(f"unknown report dimensions {unknown}; choose from {DIMENSIONS}")
    selected = [_DIMENSION_SQL[name] for name in dimensions]
    # The source is always selected, to split savings even when rows are not grouped by it.
    columns = [*selected, _SOURCE_SQL]
    where, params = _day_range(since_day, until_day, _ALL if everyone else uid)
    group = ", ".join(str(position) for position in range(1, len(columns) + 1))
    sql = f"SELECT {', '.join(columns)}, {_SUMS_SQL} FROM ledger_rollup{where} GROUP BY {group}"
    cursor = await connection.execute(sql, params)
    try:
        fetched = await cursor.fetchall()
    finally:
        await cursor.close()

    width = len(dimensions)
    grouped: dict[tuple[Any, ...], _Sums] = {}
    for found in fetched:
        key, source, figures = tuple(found[:width]), found[width], found[width + 1:]
        sums = grouped.get(key)
        if sums is None:
            sums = grouped[key] = _Sums()
        sums.add(source, figures)
    total = _Sums()
    for sums in grouped.values():
        total.merge(sums)

    # Each column holds only text or only integers (uid), never NULL: keys compare as they are.
    ordered = sorted(grouped.items(), key=lambda item: (-item[1].cost, item[0])) if width else []
    shown = ordered[:limit]
    names: dict[int, str] = {}
    if "user" in dimensions:
        at = dimensions.index("user")
        uids = {int(key[at]) for key, _sums in shown}
        # Account lookups may ask a directory service (NSS): off the event loop, once each.
        names = await anyio.to_thread.run_sync(_names_of, uids, user_name or _account_name)
    rows = []
    for key, sums in shown:
        row: dict[str, Any] = {}
        for name, value in zip(dimensions, key, strict=True):
            if name == "user":
                row["user"] = names[int(value)]
                row["uid"] = None if value == -1 else int(value)
            else:
                row[name] = value if value != "" else None
        row.update(sums.to_json())
        rows.append(row)
    # Calls a crash hid the outcome of, billed at their reservation (a few rows: indexed).
    unknown_where, unknown_params = _day_range(since_day, until_day, _ALL if everyone else uid,
                                               rollup=False)
    unknown_where = (unknown_where + " AND" if unknown_where else " WHERE") + \
        " flag = 'unknown_outcome'"
    cursor = await connection.execute(
        "SELECT COUNT(*), COALESCE(SUM(cost_picodollars), 0) FROM ledger_entries"
        + unknown_where, unknown_params)
    try:
        unknown_row = await cursor.fetchone()
    finally:
        await cursor.close()
    unknown_calls, unknown_cost = (int(unknown_row[0]), int(unknown_row[1])) \
        if unknown_row else (0, 0)
    totals = total.to_json()
    totals["unknown_outcome_requests"] = unknown_calls
    totals["unknown_outcome_usd"] = unknown_cost / 10**12
    return {
        "since": since_day,
        "until": until_day,
        "by": dimensions,
        "total": totals,
        "row_count": len(ordered),
        "rows": rows,
    }


def _day_range(since_day: str | None, until_day: str | None, uid: Any = _ALL, *,
               rollup: bool = True) -> tuple[str, list[Any]]:
    """The WHERE clause for a day range, and for one user's calls unless ``uid`` is ``_ALL``
    (the rollup counts unknown callers as uid -1, the entries as NULL)."""
    conditions: list[str] = []
    params: list[Any] = []
    if uid is not _ALL:
        if rollup:
            conditions.append("uid = ?")
            params.append(-1 if uid is None else uid)
        else:
            conditions.append("uid IS NOT DISTINCT FROM ?")
            params.append(uid)
    if since_day is not None:
        conditions.append("day >= ?")
        params.append(since_day)
    if until_day is not None:
        conditions.append("day <= ?")
        params.append(until_day)
    return (" WHERE " + " AND ".join(conditions) if conditions else ""), params


def _names_of(uids: set[int], name_of: Callable[[int], str]) -> dict[int, str]:
    return {uid: name_of(uid) for uid in uids}


def _account_name(uid: int) -> str:
    """The local account's name for ``uid``; the number when it has none; ``"unknown"`` for
    -1, the rollup's mark of a call whose caller could not be identified."""
    if uid == -1:
        return UNKNOWN_USER
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return str(uid)


# --- CSV --------------------------------------------------------------------------------------


def csv_columns(report: Mapping[str, Any]) -> list[str]:
    """The CSV header for ``report``: its dimensions, then the figures."""
    dimensions = [*report["by"]]
    if "user" in dimensions:
        dimensions.insert(dimensions.index("user") + 1, "uid")
    sources = list(report["total"]["saved_by_source"])
    return [
        *dimensions,
        "spend_usd", "saved_usd", *(f"saved_{source}_usd" for source in sources),
        "standard_cost_usd", "requests", "input_tokens", "cached_input_tokens", "output_tokens",
        "unpriced_requests", "estimated_requests", "late_requests",
        # Scores, only in a report where some answer was scored (store/feedback.py).
        *(("scored", "mean_score", "success_rate") if "good" in report else ()),
    ]


def write_csv(report: Mapping[str, Any], stream: IO[str]) -> None:
    """Write ``report`` as CSV: a header, then one line per row (the total when the report is
    not grouped by anything). Money is in USD, in plain decimals (never ``1e-05``); an empty
    dimension value (no operation, no saving source) is an empty field."""
    columns = csv_columns(report)
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(columns)
    rows = report["rows"] if report["by"] else [report["total"]]
    for row in rows:
        flat = dict(row)
        for source, saved in row["saved_by_source"].items():
            flat[f"saved_{source}_usd"] = saved
        writer.writerow([_csv_value(column, flat.get(column)) for column in columns])


def _csv_value(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column.endswith("_usd"):
        return plain_decimal(float(value))
    return str(value)


def plain_decimal(value: float) -> str:
    """The shortest decimal that reads back as ``value``, without an exponent."""
    text = format(Decimal(repr(value)), "f")
    return "0" if text in ("0.0", "-0.0", "0", "-0") else text
