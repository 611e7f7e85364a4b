"""What the job commands show: exit statuses, the bars of an upload and of a wait, a job's
table and one-line summary, lines refused, the plan, times relative to now, and JSON.

Nothing here talks to the daemon: ``cli/job_runs.py`` runs the commands and hands the answers
here. Imports nothing heavy at import time (rich is imported where a table is drawn).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from llmspool.cli.output import console
from llmspool.core.states import JobStatus

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


# Exit statuses of `wait` (and `submit --wait`), documented in its --help.
EXIT_OK = 0
EXIT_FAILED = 1  # some request failed; also an error the daemon answered (unknown job...)
EXIT_TIMEOUT = 2
EXIT_CANCELLED = 3
EXIT_UNREACHABLE = 4  # no daemon answers on the socket: retrying later may help
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT
EXIT_BROKEN_PIPE = 141  # and for SIGPIPE

# Below this an upload takes a blink; a bar would only flicker.
UPLOAD_BAR_MIN_BYTES = 4 * 1024 * 1024
# How often `wait` redraws its bar: one status request a second.
PROGRESS_POLL_SECONDS = 1.0
# Not on a terminal, `wait` logs a line when the job moves, looking this often.
LOG_POLL_SECONDS = 15.0
MAX_LINES_SHOWN = 50


def stderr_console() -> Console:
    return console(stderr=True)


def print_lines_table(lines: Sequence[Mapping[str, Any]], title: str) -> None:
    from rich.table import Table

    table = Table(title=f"{len(lines)} {title}", title_justify="left")
    table.add_column("line", justify="right")
    table.add_column("custom_id")
    table.add_column("problem")
    for line in lines[:MAX_LINES_SHOWN]:
        table.add_row(str(line.get("line", "?")), str(line.get("custom_id") or "-"),
                      str(line.get("message", "")))
    console = stderr_console()
    console.print(table)
    if len(lines) > MAX_LINES_SHOWN:
        console.print(f"... and {len(lines) - MAX_LINES_SHOWN} more")


def print_plan(plan: Sequence[Mapping[str, Any]]) -> None:
    """The daemon's plan for a new job, on standard error: requests per tier and model, and
    when each group is expected to be answered."""
    from rich.table import Table

    table = Table(title="plan", title_justify="left")
    table.add_column("tier")
    table.add_column("model")
    table.add_column("requests", justify="right")
    table.add_column("expected by")
    now = time.time()
    for group in plan:
        expected = float(group.get("expected_by") or now)
        table.add_row(str(group.get("tier")), str(group.get("model")), str(group.get("requests")),
                      f"{time.strftime('%H:%M:%S', time.localtime(expected))} "
                      f"(in {about(expected - now)})")
    stderr_console().print(table)


def about(seconds: float) -> str:
    """A rough duration for people: 45s, 12m, 3.5h."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


class UploadProgress:
    """A bytes bar on standard error while a large file uploads; nothing otherwise."""

    def __init__(self, size: int | None) -> None:
        self._size = size
        self._progress: Progress | None = None

    def __enter__(self) -> Callable[[int], None]:
        console = stderr_console()
        small = self._size is not None and self._size < UPLOAD_BAR_MIN_BYTES
        if not console.is_terminal or small:
            return lambda _n: None
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            "uploading", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), console=console, transient=True,
        )
        self._progress.start()
        task = self._progress.add_task("upload", total=self._size)
        progress = self._progress
        return lambda n: progress.advance(task, n)

    def __exit__(self, *_exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def exit_status(job: Mapping[str, Any]) -> int:
    status = job.get("status")
    if status == JobStatus.CANCELLED:
        return EXIT_CANCELLED
    if status != JobStatus.COMPLETED or (job.get("counts") or {}).get("failed", 0):
        return EXIT_FAILED
    return EXIT_OK


def summary(job: Mapping[str, Any]) -> str:
    counts = job.get("counts") or {}
    parts = [f"{counts.get(state, 0)} {state}"
             for state in ("succeeded", "failed", "cancelled", "late")
             if counts.get(state, 0) or state == "succeeded"]
    return (f"job {job.get('id')} {job.get('status')}: {', '.join(parts)}; "
            f"cost ${float(job.get('cost_usd') or 0):.6f}, "
            f"saved ${float(job.get('saved_usd') or 0):.6f}")


class FinishProgress:
    """A finished/total bar on a terminal; the callback ``wait`` feeds with each job object."""

    def __init__(self, console: Console, job_id: str) -> None:
        self._console = console
        self._job_id = job_id
        self._progress: Progress | None = None
        self._last_line = ""

    def __enter__(self) -> Callable[[Mapping[str, Any]], None]:
        if not self._console.is_terminal:
            return self._log_changes
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        from llmspool.client import finished_count

        progress = Progress(
            "[bold]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=self._console, transient=True,
        )
        self._progress = progress
        progress.start()
        task = progress.add_task(self._job_id, total=None)

        def update(job: Mapping[str, Any]) -> None:
            total = (job.get("counts") or {}).get("total")
            progress.update(task, total=total, completed=finished_count(job),
                            description=f"{self._job_id}: {wait_description(job)}")

        return update

    def _log_changes(self, job: Mapping[str, Any]) -> None:
        """Not a terminal (a log, a pipe): a line when where the requests are changes."""
        from llmspool.client import finished_count

        line = (f"{finished_count(job)}/{(job.get('counts') or {}).get('total', '?')} done; "
                f"{wait_description(job)}")
        if line != self._last_line:
            self._last_line = line
            self._console.print(f"{time.strftime('%H:%M:%S')} {self._job_id}: {line}",
                                highlight=False, markup=False)

    def __exit__(self, *_exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def job_table(job: Mapping[str, Any], now: float) -> Any:
    from rich.table import Table

    table = Table(title=f"job {job.get('id')}", show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("status", str(job.get("status")))
    if job.get("operation"):
        table.add_row("operation", str(job["operation"]))
    tags = job.get("tags") or {}
    if tags:
        table.add_row("tags", ", ".join(f"{key}={value}" for key, value in tags.items()))
    table.add_row("created", when(job.get("created_at"), now))
    table.add_row("deadline", when(job.get("deadline_at"), now))
    if job.get("finished_at"):
        table.add_row("finished", when(job["finished_at"], now))
    counts = job.get("counts") or {}
    table.add_section()
    for state, label in STATE_ROWS:
        table.add_row(label, str(counts.get(state, 0)))
    if counts.get("late"):
        table.add_row("results stored after their deadline", str(counts["late"]))
    for batch in job.get("batches") or []:
        table.add_row(f"  in {_batch_label(batch)}", _batch_progress(batch))
    by_tier = job.get("by_tier") or {}
    if by_tier:
        table.add_section()
        for tier, count in sorted(by_tier.items()):
            table.add_row(f"served on {tier}", str(count))
    table.add_section()
    table.add_row("cost so far", f"${float(job.get('cost_usd') or 0):.6f}")
    table.add_row("saved", f"${float(job.get('saved_usd') or 0):.6f}")
    return table


STATE_ROWS = (("total", "total"), ("queued", "queued here"), ("in_batch", "in a batch"),
              ("running", "running"), ("succeeded", "succeeded"), ("failed", "failed"),
              ("cancelled", "cancelled"))


def _batch_label(batch: Mapping[str, Any]) -> str:
    """``batch_abc (openai gpt-5-mini)``, or the state of one not yet created upstream."""
    name = batch.get("id") or "a batch being prepared"
    return f"{name} ({batch.get('provider')} {batch.get('model')})"


def _batch_progress(batch: Mapping[str, Any]) -> str:
    """The provider's status and progress of a batch carrying some of the job's requests."""
    status = str(batch.get("status") or "-")
    if status.startswith("llmspool:"):
        status = f"{status.removeprefix('llmspool:')} by llmspool"
    if batch.get("cancelling"):
        status += ", cancelling"
    done = f"{batch.get('completed', 0)}/{batch.get('lines', 0)} done upstream"
    return f"{batch.get('requests_of_job', 0)} requests; {status}, {done}"


def wait_description(job: Mapping[str, Any]) -> str:
    """What ``llmspool wait`` is waiting for: where the unfinished requests are, and where the
    finished ones were served, e.g. ``in batch 40 (batch_abc: in_progress), running 8 |
    flex 12, batch 60``."""
    counts = job.get("counts") or {}
    waiting = [f"{label} {counts[state]}" for state, label in (
        ("queued", "queued"), ("running", "running"), ("in_batch", "in batch"))
        if counts.get(state)]
    batches = job.get("batches") or []
    if batches and counts.get("in_batch"):
        statuses = ", ".join(f"{b.get('id') or 'preparing'}: "
                             f"{str(b.get('status')).removeprefix('llmspool:')}"
                             for b in batches[:2])
        more = f", +{len(batches) - 2}" if len(batches) > 2 else ""
        waiting[-1] += f" ({statuses}{more})"
    served = ", ".join(f"{tier} {count}" for tier, count in
                       sorted((job.get("by_tier") or {}).items()))
    text = ", ".join(waiting) or str(job.get("status", ""))
    return f"{text} | {served}" if served else text


def when(moment: Any, now: float) -> str:
    """A unix time as local time and how far from now it is."""
    if not isinstance(moment, int | float):
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))
    return f"{stamp} ({relative(moment, now)})"


def relative(moment: Any, now: float) -> str:
    """``in 5h 59m`` or ``3m 2s ago``: the two largest units are enough to plan by."""
    if not isinstance(moment, int | float):
        return "-"
    delta = moment - now
    seconds = round(abs(delta))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    text = " ".join(parts[:2])
    return f"in {text}" if delta > 0 else f"{text} ago"


def print_json(payload: Any) -> None:
    import orjson

    sys.stdout.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode() + "\n")
