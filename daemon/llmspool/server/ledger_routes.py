"""The ledger on the socket: recent entries, and cost reports.

    GET /v1/ledger[?limit=N]           today's totals (from the ledger actor) and the last N
                                       entries, newest first (default 100, at most 10000)
    GET /v1/ledger?by=day,tier&since=7d[&until=YYYY-MM-DD][&format=json|csv][&limit=N]
                                       a cost report (``llmspool.store.reports``): spend,
                                       savings by source, requests and tokens per group
                                       (with limit, only the N groups that spent most)
    ...&all_users=true                 every user's calls (admins only, ``server/access.py``)
    ...&good=0.5                       the score at which a scored answer counts as a success
                                       (``store/feedback.py``: scored, mean_score,
                                       success_rate beside spend, when any answer was scored)

Entries and reports count only the calls of the user asking (the socket's peer credentials);
an admin adds ``all_users=true`` for everyone's. Today's totals and budgets stay the daemon's.

A request with any of ``by``, ``since``, ``until`` or ``format`` is a report; ``since`` is a
duration back from now (``7d``, ``24h``: the UTC day that long ago), a date ``YYYY-MM-DD`` or
``all`` (the default); ``by`` may be empty (only the total). Reports read the rollup through a
read-only connection of their own, so they never hold up the ledger's writes; they first wait
for the ledger to commit what it has been sent, so a report includes every call answered
before it was asked for.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from typing import Any

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmspool.core.errors import InvalidRequest, PermissionDenied
from llmspool.core.streams import MemorySendStream, create_memory_stream
from llmspool.messages import LedgerEntries, LedgerEntriesQuery, LedgerStatus, StatusQuery
from llmspool.server.access import Access
from llmspool.server.routes import ask, ask_status, json_response
from llmspool.server.uvicorn_server import caller_of
from llmspool.store.backend import StoreLocation
from llmspool.store.feedback import add_quality, quality_by
from llmspool.store.records import Viewer
from llmspool.store.reports import (
    cost_report,
    open_reader,
    parse_day,
    parse_dimensions,
    parse_since,
    write_csv,
)

# The questions the front door asks the ledger.
LedgerTarget = MemorySendStream[StatusQuery[LedgerStatus] | LedgerEntriesQuery]
REPORT_PARAMS = ("by", "since", "until", "format", "good")  # all_users goes with either view
FORMATS = ("json", "csv")


def ledger_routes(
    ledger: LedgerTarget,
    store: StoreLocation,
    *,
    clock: Callable[[], float] = time.time,
    access: Access | None = None,
) -> list[Route]:
    """``GET /v1/ledger``: ``ledger`` is the ledger actor's inbox (for today's totals and the
    entries), ``store`` the store reports read."""
    access = access or Access(())

    async def ledger_view(request: Request) -> Response:
        params = request.query_params
        everyone, uid = _whose(params, access.viewer(caller_of(request.scope)))
        if any(name in params for name in REPORT_PARAMS):
            return await _report(params, ledger, store, clock(), everyone, uid)
        raw_limit = params.get("limit", "100")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 10_000:
            raise InvalidRequest("limit must be an integer from 1 to 10000", param="limit")
        answer_in, answer_out = create_memory_stream[LedgerEntries](1)
        with answer_in, answer_out:
            return json_response(await ask(
                ledger, LedgerEntriesQuery(int(raw_limit), everyone, uid, answer_in),
                answer_out))

    return [Route("/v1/ledger", ledger_view, methods=["GET"])]


def _whose(params: QueryParams, viewer: Viewer) -> tuple[bool, int | None]:
    """(every user's calls?, else whose): the caller's own, or all for an admin who asks."""
    raw = params.get("all_users", "false").strip().lower()
    if raw not in ("true", "1", "false", "0"):
        raise InvalidRequest("all_users must be true or false", param="all_users")
    if raw in ("true", "1"):
        if not viewer.admin:
            raise PermissionDenied(
                "all_users is for the daemon's admins (root, and the users and groups in "
                "[daemon] admins); without it you see your own calls",
                param="all_users", code="admin_only")
        return True, None
    return False, viewer.uid


async def _report(
    params: QueryParams, ledger: LedgerTarget, store: StoreLocation, now: float,
    everyone: bool, uid: int | None,
) -> Response:
    output = params.get("format", "json").strip().lower()
    if output not in FORMATS:
        raise InvalidRequest(f"format must be json or csv, got {output!r}", param="format")
    try:
        by = parse_dimensions(params.get("by", ""))
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="by") from None
    try:
        since_day = parse_since(params.get("since", "all"), now)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="since") from None
    until_day = None
    if "until" in params:
        try:
            until_day = parse_day(params["until"])
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="until") from None
        if since_day is not None and until_day < since_day:
            raise InvalidRequest(f"until ({until_day}) is before since ({since_day})",
                                 param="until")
    limit = None
    if "limit" in params:
        raw_limit = params["limit"]
        if not raw_limit.isdigit() or int(raw_limit) < 1:
            raise InvalidRequest("limit must be a positive integer (the rows to keep)",
                                 param="limit")
        limit = int(raw_limit)
    good = _good(params.get("good", "0.5"))
    # The ledger answers a query only once everything that reached it before is committed:
    # asking first makes a report include the calls its client has just had answered.
    await ask_status(ledger)
    async with open_reader(store) as connection:
        report = await cost_report(connection, by=by, since_day=since_day, until_day=until_day,
                                   limit=limit, everyone=everyone, uid=uid)
        add_quality(report, await quality_by(
            connection, by, since_day=since_day, until_day=until_day, everyone=everyone,
            uid=uid, good=good), good)
    if output == "csv":
        return Response(_csv_text(report), media_type="text/csv; charset=utf-8")
    return json_response(report)


def _good(text: str) -> float:
    try:
        good = float(text)
    except ValueError:
        good = math.nan
    if not 0 <= good <= 1:
        raise InvalidRequest(f"good must be a score from 0 to 1, got {text!r}", param="good")
    return good


def _csv_text(report: dict[str, Any]) -> str:
    text = io.StringIO()
    write_csv(report, text)
    return text.getvalue()
