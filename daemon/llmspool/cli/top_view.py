"""One frame of ``llmspool top``, drawn from a ``Snapshot`` (``top_data``): a header, then
panels for the calls, today's money, the caller's own calls today, the cache, the caller's jobs
in progress, open batches and circuit breakers.

Pure: a snapshot in, a rich renderable out, so that a test renders one to text and reads it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich import box
from rich.console import Group
from rich.markup import escape
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from llmspool.cli.costs import format_usd, money_decimals
from llmspool.cli.job_views import relative
from llmspool.cli.status_tables import batches_table, breakers_table

if TYPE_CHECKING:
    from rich.console import RenderableType

    from llmspool.cli.top_data import Mix, Snapshot

# The tiers in the order a reader expects them (cheapest last); others follow by name.
TIER_ORDER = ("priority", "standard", "flex", "batch")
BAR_WIDTH = 20


def render(snapshot: Snapshot, *, problem: str | None = None, keys: bool = True) -> Group:
    """The frame for ``snapshot``. ``problem``: why it is not fresh (the last refresh failed),
    shown under the header. ``keys``: say that ``q`` quits (not in a one-off frame)."""
    status = snapshot.status
    parts: list[RenderableType] = [_header(snapshot, keys)]
    if problem:
        parts.append(Text(f"{problem}; showing what the daemon said at "
                          f"{_clock(snapshot.taken_at)}", style="bold red"))
    parts.append(_side_by_side(_calls_panel(snapshot), _money_panel(snapshot)))
    parts.append(_side_by_side(_yours_panel(snapshot), _cache_panel(snapshot)))
    if snapshot.jobs:
        parts.append(_jobs_table(snapshot))
    batches = status["batches"]
    if batches["open"] or batches["finished"]:
        parts.append(batches_table(batches, status["batch_submitter"]))
    breakers = status["dispatcher"]["breakers"]
    parts.append(breakers_table(breakers) if breakers
                 else Text("circuit breakers: none has carried a call yet", style="dim"))
    return Group(*parts)


def _header(snapshot: Snapshot, keys: bool) -> Text:
    status = snapshot.status
    text = Text.assemble(
        (f"llmspool {status['version']}", "bold"),
        f" on {snapshot.socket}, up {_span(status['uptime_s'])}, "
        f"{_clock(snapshot.taken_at)} UTC",
    )
    if keys:
        text.append("   q quits", style="dim")
    return text


def _side_by_side(left: Panel, right: Panel) -> Table:
    grid = Table.grid(padding=(0, 1))
    grid.add_column()
    grid.add_column()
    grid.add_row(left, right)
    return grid


def _figures(title: str, *, header: Sequence[str] = ()) -> Table:
    """A borderless table of figures: the first column names, the others right-aligned."""
    # At least as wide as its title: rich would wrap a title to a narrow table's width.
    table = Table(box=box.SIMPLE_HEAD if header else None, show_header=bool(header),
                  pad_edge=False, title=title, title_justify="left", title_style="bold",
                  min_width=len(title))
    for position, heading in enumerate(header or ("", "")):
        table.add_column(heading, justify="left" if position == 0 else "right", no_wrap=True)
    return table


def _calls_panel(snapshot: Snapshot) -> Panel:
    status = snapshot.status
    queue, dispatcher = status["queue"], status["dispatcher"]
    flying = dispatcher.get("in_flight_by_tier", {})  # absent before issue 21's daemon
    served = dispatcher["served_by_tier"]
    yours = {line.name: line.requests for line in snapshot.tiers}
    tiers = _tier_order({*flying, *served, *yours})
    table = _figures("calls by tier",
                     header=("tier", "in flight", "served since start", "yours today"))
    for tier in tiers:
        table.add_row(escape(tier), str(flying.get(tier, 0)), f"{served.get(tier, 0):,}",
                      f"{yours.get(tier, 0):,}")
    table.add_row("all", str(dispatcher["in_flight"]), f"{sum(served.values()):,}",
                  f"{sum(yours.values()):,}", style="bold")
    more = _figures("")
    waiting = f"{queue['waiting']:,}"
    if queue["waiting"]:
        waiting += f" (oldest {_span(queue['oldest_wait_s'])})"
    more.add_row("queue: waiting", waiting)
    more.add_row("queue: places in use", f"{queue['in_flight']:,} of {queue['slots']:,}")
    more.add_row("refused, queue full", f"{queue['refused_full']:,}")
    more.add_row("failed", f"{dispatcher['failed']:,}")
    more.add_row("deferred requests queued", f"{status['jobs']['requests_queued']:,}")
    to_batch = sum(group["requests"] for group in status["batch_submitter"]["waiting"])
    more.add_row("requests waiting for a batch", f"{to_batch:,}")
    return Panel(Group(table, more), title="calls", title_align="left", expand=False)


def _money_panel(snapshot: Snapshot) -> Panel:
    ledger = snapshot.status["ledger"]
    decimals = money_decimals([ledger["spend_today_usd"], ledger["saved_today_usd"],
                               ledger["reserved_usd"]])
    table = _figures("")
    table.add_row("spend today", format_usd(ledger["spend_today_usd"], decimals))
    table.add_row("saved today", format_usd(ledger["saved_today_usd"], decimals))
    table.add_row("calls today", f"{ledger['calls_today']:,}")
    table.add_row("reserved, not yet settled",
                  f"{format_usd(ledger['reserved_usd'], decimals)} "
                  f"({_calls(ledger['calls_reserved'])})")
    table.add_row("refused by a cap", f"{ledger['refused_by_budget']:,}")
    caps = Table(box=None, show_header=False, pad_edge=False, title="caps (daily)",
                 title_justify="left", title_style="bold")
    caps.add_column("cap", no_wrap=True)
    caps.add_column("spent", justify="right", no_wrap=True)
    caps.add_column("bar", no_wrap=True)
    caps.add_column("share", justify="right", no_wrap=True)
    for cap in ledger["budgets"]:
        fraction = cap["fraction"] or 0.0
        # Names such as "[budgets] daily_usd" are text, not markup.
        caps.add_row(escape(cap["cap"]), f"{format_usd(cap['spent_usd'], decimals)} of "
                     f"{format_usd(cap['limit_usd'], money_decimals([cap['limit_usd']]))}",
                     ProgressBar(total=1.0, completed=min(fraction, 1.0), width=BAR_WIDTH),
                     f"{fraction:.0%}", style="bold red" if fraction >= 1 else "")
    parts: list[RenderableType] = [table]
    parts.append(caps if ledger["budgets"] else Text("no daily caps set ([budgets])",
                                                      style="dim"))
    return Panel(Group(*parts), title=f"money today ({ledger['day']}, UTC), all users",
                 title_align="left", expand=False)


def _yours_panel(snapshot: Snapshot) -> Panel:
    models = snapshot.models
    calls = sum(line.requests for line in models)
    decimals = money_decimals([line.spend_usd for line in models]
                              + list(snapshot.saved_by_source.values()))
    table = _figures("model mix", header=("model", "calls", "share", "spend"))
    for line in models:
        table.add_row(escape(line.name), f"{line.requests:,}", _share(line, calls),
                      format_usd(line.spend_usd, decimals))
    parts: list[RenderableType] = [table if models else Text("no calls today", style="dim")]
    saved = _figures("saved by source")
    for source, amount in sorted(snapshot.saved_by_source.items(), key=lambda kv: -kv[1]):
        if amount:
            saved.add_row(escape(source), format_usd(amount, decimals))
    if saved.row_count:
        parts.append(saved)
    return Panel(Group(*parts), title="your calls today", title_align="left", expand=False)


def _cache_panel(snapshot: Snapshot) -> Panel:
    cache = snapshot.status["cache"]
    table = _figures("")
    if not cache["enabled"]:
        return Panel(Text("off ([cache] enabled = false)", style="dim"), title="cache",
                     title_align="left", expand=False)
    ratio = cache["hit_ratio"]
    table.add_row("hit rate", "-" if ratio is None else f"{ratio:.1%}")
    table.add_row("hits / misses", f"{cache['hits']:,} / {cache['misses']:,}")
    table.add_row("shared with an identical call", f"{cache['shared']:,}")
    table.add_row("entries", f"{cache['entries']:,} of {cache['max_entries']:,}")
    return Panel(table, title="cache", title_align="left", expand=False)


def _jobs_table(snapshot: Snapshot) -> Table:
    from llmspool.client import finished_count

    table = Table(title="your jobs in progress", title_justify="left", box=box.SIMPLE_HEAD)
    for heading in ("job", "done", "progress", "deadline", "operation"):
        table.add_column(heading, justify="right" if heading == "done" else "left",
                         no_wrap=heading != "operation")
    for job in snapshot.jobs:
        total, done = job["counts"]["total"], finished_count(job)
        table.add_row(escape(job["id"]), f"{done:,}/{total:,}",
                      ProgressBar(total=max(total, 1), completed=done, width=BAR_WIDTH),
                      relative(job["deadline_at"], snapshot.taken_at),
                      escape(job["operation"] or "-"))
    return table


def _tier_order(tiers: set[str]) -> list[str]:
    known = [tier for tier in TIER_ORDER if tier in tiers]
    return known + sorted(tiers - set(TIER_ORDER))


def _calls(count: int) -> str:
    return f"{count:,} call" if count == 1 else f"{count:,} calls"


def _share(line: Mix, calls: int) -> str:
    return f"{line.requests / calls:.0%}" if calls else "-"


def _span(seconds: float) -> str:
    """``1h 5m``: a duration by its two largest units."""
    return relative(seconds, 0.0).removeprefix("in ") if seconds > 0 else "0s"


def _clock(moment: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(moment))
