"""``llmspool costs``: what was spent and saved, grouped as the user asks::

    llmspool costs [--by day,tier,model,operation,user,deadline,daemon] [--since 7d]
                   [--until DATE]
                   [--all-users] [--good 0.5]
                   [--limit N] [--json | --csv] [--socket PATH] [--config PATH]

It asks the daemon for ``GET /v1/ledger?by=...&since=...`` (a report over the ledger's daily
rollup) and prints a table with a total row, or the report's JSON, or CSV. Standard output
carries only the report; failures are one line on standard error and exit status 1.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from llmspool.cli.arguments import from_0_to_1
from llmspool.cli.output import console
from llmspool.core import unix_http
from llmspool.core.errors import StartupError
from llmspool.store.reports import DIMENSIONS, parse_day, parse_dimensions, parse_since

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BROKEN_PIPE = 141
REQUEST_TIMEOUT = 60.0
# A table longer than this is for a file, not for reading: --json or --csv, or --limit.
TABLE_ROWS = 50

_DIMENSION_HELP = {
    "day": "the UTC date of the call",
    "provider": "the provider that served it (openai, ollama, ...)",
    "model": "the model",
    "tier": "the tier it was served on: standard, flex, batch, priority",
    "operation": "the operation tag (x-llmspool-operation, --operation)",
    "user": "the local account that called (from the socket's peer credentials)",
    "source": "where the saving came from: tier (batch, flex discount), cache, dedup, routing",
    "deadline": "the time its caller gave it: none, <=1m, <=15m, <=2h, <=24h, >24h",
    "daemon": "the daemon of a shared store ([store] url) that made the call ([store] name)",
}

DESCRIPTION = """\
Report what LLM calls cost and what llmspool saved, from the daemon's ledger. Each ledger
entry keeps what the call cost and what it would have cost at standard list price; saved is the
difference, split by where it came from: the tier (batch and flex are half price), the cache or
deduplication (free), or routing to a cheaper model. It counts your own calls (the Unix user
you run as); the daemon's admins see everyone's with --all-users.

The table has one row per group, largest spend first, and a total row; --json prints
{"since", "until", "by", "total": {"spend_usd", "saved_usd", "saved_by_source", "requests",
"input_tokens", "output_tokens", ...}, "rows": [...]}; --csv prints one line per row with a
header (the total alone when --by is empty).

When answers in the report were scored (`llmspool feedback`), quality stands beside cost:
"scored" answers, their mean score, and "success", the share of them scored at least --good
(JSON and CSV: scored, mean_score, success_rate; grouping by source or deadline shows them in
the total only).
"""

SCORE = from_0_to_1("a score")


def add_costs_command(commands: Any) -> None:
    """Add ``costs`` to the ``llmspool`` subcommands."""
    dims = "\n".join(f"  {name:<10} {text}" for name, text in _DIMENSION_HELP.items())
    costs = commands.add_parser(
        "costs",
        help="spend and savings, by day, tier, model, operation or user",
        description=DESCRIPTION,
        epilog=f"dimensions for --by:\n{dims}\n\nexamples:\n"
        "  llmspool costs --by day,tier --since 7d\n"
        "  llmspool costs --by model,operation --since 2026-03-01 --until 2026-03-31 --csv\n"
        "  llmspool costs --by deadline,tier --since 24h  (late requests per deadline class)\n"
        "  llmspool costs --by daemon --all-users         (each daemon of a shared store)\n"
        "  llmspool costs --by '' --since 24h --json     (the total only)\n\n"
        "exit status: 0 printed; 1 the daemon cannot be reached or refused the request; "
        "2 bad arguments.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    costs.add_argument("--by", type=_dimensions, default=["day"], metavar="DIMS",
                       help="comma-separated dimensions to group by, from "
                       f"{','.join(DIMENSIONS)} (default: day; '' for the total only)")
    costs.add_argument("--since", type=_since, default="7d", metavar="WHEN",
                       help="the first UTC day covered: a duration back from now (7d, 24h: "
                       "the day that long ago), a date YYYY-MM-DD, or 'all' (default: 7d)")
    costs.add_argument("--until", type=_until, metavar="DATE",
                       help="the last UTC day covered, YYYY-MM-DD (default: today)")
    costs.add_argument("--limit", type=_count, metavar="N",
                       help="show only the N groups that spent most; the total still counts "
                       f"them all (default: {TABLE_ROWS} in the table, all with --json and "
                       "--csv; 0: all)")
    costs.add_argument("--all-users", action="store_true",
                       help="every user's calls, not only yours (for the daemon's admins: "
                       "root and [daemon] admins)")
    costs.add_argument("--good", type=SCORE, default=0.5, metavar="SCORE",
                       help="a scored answer counts as a success when its score is at least "
                       "this (0 to 1; default: 0.5)")
    output = costs.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the report as JSON")
    output.add_argument("--csv", action="store_true", help="print the report as CSV")
    costs.add_argument("--socket", metavar="PATH", help="socket path (default: "
                       "$LLMSPOOL_SOCKET, else the config's [daemon] socket)")
    costs.add_argument("--config", metavar="PATH", help="config file to find the socket in")
    costs.set_defaults(run=run_costs)


def _dimensions(text: str) -> list[str]:
    try:
        return parse_dimensions(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(text)



def _since(text: str) -> str:
    # Checked here for a usage message; the daemon resolves it against its own clock.
    try:
        parse_since(text, time.time())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def _until(text: str) -> str:
    try:
        return parse_day(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_costs(args: argparse.Namespace) -> int:
    """Fetch the report and print it in the chosen format; the exit status."""
    from llmspool.core.locate import socket_path

    query = {"by": ",".join(args.by), "since": args.since, "good": str(args.good)}
    if args.all_users:
        query["all_users"] = "true"
    if args.until:
        query["until"] = args.until
    limit = args.limit if args.limit is not None else (
        0 if args.json or args.csv else TABLE_ROWS)
    if limit:
        query["limit"] = str(limit)
    path = socket_path(args.socket, args.config)
    try:
        report = _fetch(path, f"/v1/ledger?{urlencode(query)}")
    except _Failure as exc:
        print(f"llmspool: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        if args.json:
            import orjson

            sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
        elif args.csv:
            from llmspool.store.reports import write_csv

            write_csv(report, sys.stdout)
        else:
            console().print(report_table(report))
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return EXIT_OK


class _Failure(Exception):
    """The report could not be had; the message says why."""


def _fetch(path: str, url: str) -> dict[str, Any]:
    import orjson

    try:
        status, body = unix_http.get(path, url, REQUEST_TIMEOUT)
    except StartupError as exc:
        raise _Failure(str(exc)) from None
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    if status != 200 or not isinstance(payload, dict):
        message = (payload or {}).get("error", {}).get("message") if isinstance(
            payload, dict) else None
        raise _Failure(message or f"the daemon answered {status} to GET {url}")
    if "total" not in payload:
        raise _Failure("the daemon answered without a report; is it an older llmspool?")
    return payload


# --- the table ---------------------------------------------------------------------------------


def report_table(report: Mapping[str, Any]) -> Any:
    """A rich ``Table`` of ``report``: a row per group, largest spend first, and the total as
    the footer. Token counts are abbreviated (``12.3k``); JSON and CSV have them exact."""
    from rich import box
    from rich.table import Table

    by: list[str] = list(report["by"])
    total = report["total"]
    rows: Sequence[Mapping[str, Any]] = report["rows"]
    # A column per saving source when savings came from more than one (and rows are not
    # already split by source); with one, "saved" says it all and the caption names it.
    saving = [source for source, saved in total["saved_by_source"].items() if saved]
    sources = saving if len(saving) > 1 and "source" not in by else []
    everything = [*rows, total]
    spend_decimals = money_decimals([row["spend_usd"] for row in everything])
    saved_decimals = money_decimals(
        [row["saved_usd"] for row in everything]
        + [row["saved_by_source"].get(source, 0.0) for row in everything for source in sources]
    )

    # Grouped: the total is the footer, under a rule. Not grouped: it is the only row.
    table = Table(title=_title(report), title_justify="left", box=box.SIMPLE,
                  show_footer=bool(by), footer_style="bold", caption=_caption(report, saving),
                  caption_justify="left", pad_edge=False)
    footer = ["total", *([""] * (len(by) - 1))]
    for name, text in zip(by, footer, strict=False):
        # Names give way (wrap) on a narrow terminal; figures never do.
        table.add_column(name, footer=text, overflow="fold")
    numbers: list[tuple[str, Callable[[Mapping[str, Any]], str]]] = [
        ("requests", lambda row: f"{row['requests']:,}"),
        ("tokens in", lambda row: compact_count(row["input_tokens"])),
        ("tokens out", lambda row: compact_count(row["output_tokens"])),
        ("spend", lambda row: format_usd(row["spend_usd"], spend_decimals)),
        ("saved", lambda row: format_usd(row["saved_usd"], saved_decimals)),
        *((("late", lambda row: f"{row.get('late_requests', 0):,}"),)
          if "deadline" in by or total.get("late_requests") else ()),
        *((f"saved: {source}", _saved_on(source, saved_decimals)) for source in sources),
        *(_QUALITY_COLUMNS if "good" in report else ()),
    ]
    for heading, cell in numbers:
        table.add_column(heading, footer=cell(total), justify="right", no_wrap=True)
    for row in rows if by else [total]:
        table.add_row(*(_dimension_text(name, row) for name in by),
                      *(cell(row) for _heading, cell in numbers))
    return table


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# Scores beside cost, when any answer in the report was scored.
_QUALITY_COLUMNS: tuple[tuple[str, Callable[[Mapping[str, Any]], str]], ...] = (
    ("scored", lambda row: f"{row.get('scored', 0):,}"),
    ("score", lambda row: _fraction(row.get("mean_score"))),
    ("success", lambda row: "-" if row.get("success_rate") is None
     else f"{row['success_rate']:.0%}"),
)


def _saved_on(source: str, decimals: int) -> Callable[[Mapping[str, Any]], str]:
    return lambda row: format_usd(row["saved_by_source"].get(source, 0.0), decimals)


def compact_count(count: int) -> str:
    """``9,999``, ``12.3k``, ``4.56M``: a count a reader takes in at a glance."""
    if count < 10_000:
        return f"{count:,}"
    for size, unit in ((10**9, "B"), (10**6, "M"), (10**3, "k")):
        if count >= size:
            value = count / size
            return f"{value:.3g}{unit}" if value < 1000 else f"{value:,.0f}{unit}"
    return str(count)  # pragma: no cover (unreachable: 10,000 is at least 10**3)


def _dimension_text(name: str, row: Mapping[str, Any]) -> str:
    value = row.get(name)
    return "-" if value is None else str(value)


def _title(report: Mapping[str, Any]) -> str:
    since, until = report.get("since"), report.get("until")
    span = (f"{since} to {until}" if since and until else f"since {since}" if since
            else f"until {until}" if until else "all time")
    by = f" by {', '.join(report['by'])}" if report["by"] else ""
    return f"LLM costs{by}, {span} (UTC)"


def _caption(report: Mapping[str, Any], saving: Sequence[str]) -> str | None:
    total = report["total"]
    notes = []
    shown, count = len(report["rows"]), report.get("row_count", len(report["rows"]))
    if shown < count:
        notes.append(f"the {shown:,} of {count:,} rows that spent most (--limit 0 shows all; "
                     "the total counts all)")
    if len(saving) == 1:
        notes.append(f"all savings from {saving[0]}")
    if "good" in report:
        notes.append(f"success: the share of scored answers with a score of at least "
                     f"{report['good']:g}")
    if total["unpriced_requests"]:
        notes.append(f"{total['unpriced_requests']:,} requests had no price (not in spend)")
    if total["estimated_requests"]:
        notes.append(f"{total['estimated_requests']:,} billed on estimated usage or a guessed "
                     "tier")
    if total.get("unknown_outcome_requests"):
        notes.append(f"{total['unknown_outcome_requests']:,} calls of unknown outcome (in flight "
                     "at a crash) billed at their reservation, "
                     f"${total['unknown_outcome_usd']:.6f}")
    return "; ".join(notes) or None


def money_decimals(amounts: Sequence[float]) -> int:
    """Decimals that show the smallest non-zero amount with three significant digits (2 to 10),
    so a column of cents and a column of fractions of a cent both read well."""
    smallest = min((abs(a) for a in amounts if a), default=1.0)
    return max(2, min(10, 2 - math.floor(math.log10(smallest))))


def format_usd(amount: float, decimals: int) -> str:
    """``$1,234.500000``-style: thousands separated, ``decimals`` places; nothing is ``$0``."""
    return f"${amount:,.{decimals}f}" if amount else "$0"
