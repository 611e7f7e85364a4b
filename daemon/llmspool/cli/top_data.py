"""What ``llmspool top`` shows, fetched from the daemon over its socket, apart from the drawing
so that tests can hand the view a snapshot of their own.

One snapshot is three questions, all of which the daemon answers to any local user:

- ``GET /v1/status``: the daemon as a whole (the queue, calls in flight by tier, the breakers,
  open batches, the cache, today's spend and the caps); ``llmspool status`` shows the same.
- ``GET /v1/ledger?by=model,tier&since=DAY&until=DAY``: the caller's own calls on the daemon's
  budget day (the model mix, calls by tier, savings by source); the daemon counts only the
  calls of the Unix user asking.
- ``GET /v1/jobs``: the caller's own jobs (the daemon lists only those).

It never opens the daemon's database: another user may not read it, and the daemon is the one
that knows whose rows are whose.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict, cast
from urllib.parse import urlencode

import orjson

from llmspool.core import unix_http
from llmspool.core.errors import StartupError
from llmspool.messages import (
    CacheStatus,
    DispatcherStatus,
    JobView,
    KeeperStatus,
    LedgerStatus,
    PollerStatus,
    QueueStatus,
    SubmitterStatus,
)

REQUEST_TIMEOUT = 10.0
JOBS_LISTED = 50  # the newest jobs asked for; those still in progress are shown


class StatusReport(TypedDict):
    """``GET /v1/status``: the version, the uptime and each actor's snapshot by name."""

    version: str
    uptime_s: float
    queue: QueueStatus
    dispatcher: DispatcherStatus
    ledger: LedgerStatus
    cache: CacheStatus
    jobs: KeeperStatus
    batch_submitter: SubmitterStatus
    batches: PollerStatus


@dataclass(frozen=True, slots=True)
class Mix:
    """One line of a mix: a model's (or tier's) calls today, what they cost and saved."""

    name: str
    requests: int
    spend_usd: float
    saved_usd: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one frame shows, as the daemon answered it at ``taken_at``."""

    socket: str
    taken_at: float
    status: StatusReport
    today: Mapping[str, Any]
    """The caller's cost report for the daemon's day, by model and tier (``/v1/ledger``)."""
    jobs: list[JobView]
    """The caller's jobs still in progress, newest first."""

    @property
    def models(self) -> list[Mix]:
        """The caller's calls today by model, most spent first."""
        return mix(self.today.get("rows", []), "model")

    @property
    def tiers(self) -> list[Mix]:
        """The caller's calls today by the tier that served them, most spent first."""
        return mix(self.today.get("rows", []), "tier")

    @property
    def saved_by_source(self) -> dict[str, float]:
        """What the caller's calls today saved, by source (tier, cache, dedup, routing)."""
        total = self.today.get("total") or {}
        return dict(total.get("saved_by_source") or {})


class Unreachable(StartupError):
    """The daemon did not answer, or answered something ``top`` cannot show; the message says
    which, and how to check (a ``StartupError``: the command line prints it and exits 1)."""


def fetch(socket: str, timeout: float = REQUEST_TIMEOUT) -> Snapshot:
    """One snapshot from the daemon on ``socket``, or ``Unreachable``."""
    status = cast(StatusReport, _get_json(socket, "/v1/status", timeout))
    if "ledger" not in status or "dispatcher" not in status:
        raise Unreachable(f"the daemon at {socket} answered /v1/status without its ledger; is "
                          "it an older llmspool?")
    day = status["ledger"]["day"]
    today = _get_json(socket, "/v1/ledger?" + urlencode(
        {"by": "model,tier", "since": day, "until": day}), timeout)
    listed = _get_json(socket, f"/v1/jobs?limit={JOBS_LISTED}", timeout)
    jobs = [job for job in listed.get("data", []) if job.get("status") == "in_progress"]
    return Snapshot(socket, time.time(), status, today, jobs)


def _get_json(socket: str, url: str, timeout: float) -> dict[str, Any]:
    # unix_http raises StartupError (cannot reach the daemon; is it running?) as it is.
    status, body = unix_http.get(socket, url, timeout)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    if status != 200 or not isinstance(payload, dict):
        error = payload.get("error") if isinstance(payload, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        raise Unreachable(message or f"the daemon at {socket} answered {status} to GET {url}")
    return payload


def mix(rows: Iterable[Mapping[str, Any]], key: str) -> list[Mix]:
    """Report rows summed by ``key`` (``model`` or ``tier``), most spent first, then most calls,
    then by name: the same order every refresh, so lines do not jump about."""
    sums: dict[str, list[float]] = {}
    for row in rows:
        name = str(row.get(key) or "-")
        totals = sums.setdefault(name, [0, 0.0, 0.0])
        totals[0] += int(row.get("requests", 0))
        totals[1] += float(row.get("spend_usd", 0.0))
        totals[2] += float(row.get("saved_usd", 0.0))
    lines = [Mix(name, int(requests), spend, saved)
             for name, (requests, spend, saved) in sums.items()]
    return sorted(lines, key=lambda line: (-line.spend_usd, -line.requests, line.name))
