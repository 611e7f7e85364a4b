"""Scores for answers (migration 0009): finding the answer a score is for, keeping the score,
and the quality figures the costs report shows beside spend.

An answer is named by its response id (the ``id`` of a chat completion or response, which the
ledger entry that billed it keeps) or by a job line (job id and custom id). Its owner is the
uid of its ledger entry or job; ``find_answer`` returns only an answer the viewer may see, so a
caller cannot tell another user's answer from one that does not exist.

Quality per group: ``scored`` (answers with a score), ``mean_score``, and ``success_rate``, the
share of scored answers whose score is at least the report's ``good`` threshold.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from llmspool.store.records import Viewer
from llmspool.store.response_ids import answers_with

if TYPE_CHECKING:
    from llmspool.store.connections import AsyncConnection, Connection

__all__ = ["QUALITY_DIMENSIONS", "ScoredAnswer", "add_quality", "find_answer",
           "find_job_line", "quality_by", "record_feedback"]

# The report dimensions a score knows (the rest, source and deadline, are the ledger's alone).
QUALITY_DIMENSIONS = {"day": "day", "provider": "provider", "model": "model", "tier": "tier",
                      "operation": "operation", "user": "uid"}


@dataclass(frozen=True, slots=True)
class ScoredAnswer:
    """The answer a score is for, with what the report groups it by."""

    answer_key: str
    response_id: str | None
    job_id: str | None
    custom_id: str | None
    uid: int | None
    day: str
    provider: str
    model: str
    tier: str
    operation: str | None


def find_answer(connection: Connection, response_id: str,
                viewer: Viewer) -> ScoredAnswer | None:
    """The answer with ``response_id`` that ``viewer`` may see (its own first), or None."""
    rows = answers_with(connection, response_id, "uid, day, provider, model, tier, operation",
                        "status = 200")
    visible = [row for row in rows if viewer.sees(row[0])]
    if not visible:
        return None
    # A repeated id (a job line retried after a crash) is one answer; the caller's own first.
    uid, day, provider, model, tier, operation = next(
        (row for row in visible if row[0] == viewer.uid), visible[0])
    return ScoredAnswer(response_id, response_id, None, None, uid, day, provider, model, tier,
                        operation)


def find_job_line(connection: Connection, job_id: str, custom_id: str,
                  viewer: Viewer) -> ScoredAnswer | None:
    """The succeeded line ``custom_id`` of job ``job_id``, if ``viewer`` may see it."""
    row = connection.execute(
        "SELECT j.uid, r.finished_at, r.provider, r.model, r.tier, j.operation, r.result "
        "FROM job_requests r JOIN jobs j ON j.id = r.job_id "
        "WHERE r.job_id = ? AND r.custom_id = ? AND r.state = 'succeeded'",
        (job_id, custom_id)).fetchone()
    if row is None or not viewer.sees(row[0]):
        return None
    uid, finished_at, provider, model, tier, operation, result = row
    day = time.strftime("%Y-%m-%d", time.gmtime(finished_at or 0))  # the ledger's UTC day
    response_id = _response_id(result)
    key = response_id or f"job:{job_id}:{custom_id}"
    return ScoredAnswer(key, response_id, job_id, custom_id, uid, day, provider, model,
                        tier or "", operation)


def _response_id(result: bytes | str | None) -> str | None:
    """The id of the answer in a job line's stored result, when it has one."""
    if result is None:
        return None
    try:
        document = orjson.loads(result)
    except orjson.JSONDecodeError:
        return None
    response = document.get("response") if isinstance(document, dict) else None
    body = response.get("body") if isinstance(response, dict) else None
    answer_id = body.get("id") if isinstance(body, dict) else None
    return answer_id if isinstance(answer_id, str) else None


def record_feedback(connection: Connection, answer: ScoredAnswer, *, score: float,
                    label: str | None, comment: str | None, scorer_uid: int | None,
                    now: float) -> None:
    """Keep ``score`` for ``answer``, replacing any score it had."""
    connection.execute(
        "INSERT INTO feedback (answer_key, response_id, job_id, custom_id, uid, "
        "scorer_uid, day, provider, model, tier, operation, score, label, comment, "
        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (answer_key) DO UPDATE SET response_id = excluded.response_id, "
        "job_id = excluded.job_id, custom_id = excluded.custom_id, uid = excluded.uid, "
        "scorer_uid = excluded.scorer_uid, day = excluded.day, provider = excluded.provider, "
        "model = excluded.model, tier = excluded.tier, operation = excluded.operation, "
        "score = excluded.score, label = excluded.label, comment = excluded.comment, "
        "created_at = excluded.created_at",
        (answer.answer_key, answer.response_id, answer.job_id, answer.custom_id,
         -1 if answer.uid is None else answer.uid, scorer_uid, answer.day, answer.provider,
         answer.model, answer.tier, answer.operation or "", score, label, comment, now))


async def quality_by(connection: AsyncConnection, by: Sequence[str], *,
                     since_day: str | None, until_day: str | None, everyone: bool,
                     uid: int | None, good: float
                     ) -> dict[tuple[Any, ...], tuple[int, float, int]] | None:
    """(scored, sum of scores, good answers) per group of the dimensions ``by``, keyed as
    the rollup keys them ('' for no operation, -1 for an unknown user); the key ``()`` is the
    total. None when ``by`` names a dimension scores do not have."""
    if any(name not in QUALITY_DIMENSIONS for name in by):
        return None
    columns = [QUALITY_DIMENSIONS[name] for name in by]
    conditions: list[str] = []
    params: list[Any] = []
    if not everyone:
        conditions.append("uid = ?")
        params.append(-1 if uid is None else uid)
    if since_day is not None:
        conditions.append("day >= ?")
        params.append(since_day)
    if until_day is not None:
        conditions.append("day <= ?")
        params.append(until_day)
    where = " WHERE " + " AND ".join(conditions) if conditions else ""
    select = ", ".join([*columns, "COUNT(*)", "SUM(score)",
                         "SUM(CASE WHEN score >= ? THEN 1 ELSE 0 END)"])
    group = f" GROUP BY {', '.join(columns)}" if columns else ""
    rows = await connection.execute_fetchall(f"SELECT {select} FROM feedback{where}{group}",
                                             [good, *params])
    width = len(columns)
    found: dict[tuple[Any, ...], tuple[int, float, int]] = {}
    total = [0, 0.0, 0]
    for row in rows:
        scored, summed, good_count = int(row[width]), float(row[width + 1] or 0), int(
            row[width + 2] or 0)
        if scored:
            found[tuple(row[:width])] = (scored, summed, good_count)
            total = [total[0] + scored, total[1] + summed, total[2] + good_count]
    found[()] = (int(total[0]), float(total[1]), int(total[2]))
    return found


def add_quality(report: dict[str, Any], quality: Mapping[tuple[Any, ...],
                tuple[int, float, int]] | None, good: float) -> None:
    """Put ``scored``, ``mean_score`` and ``success_rate`` in ``report``'s total and rows
    (``report["good"]`` says the threshold), when any answer in it was scored: a report with
    no scores stays as it was."""
    if quality is None or not quality.get((), (0, 0.0, 0))[0]:
        return
    report["good"] = good
    report["total"].update(_figures(quality[()]))
    for row in report["rows"]:
        key = tuple(_rollup_value(name, row) for name in report["by"])
        row.update(_figures(quality.get(key, (0, 0.0, 0))))


def _rollup_value(name: str, row: Mapping[str, Any]) -> Any:
    """A report row's value of dimension ``name`` as the rollup and scores keep it."""
    if name == "user":
        return -1 if row.get("uid") is None else row["uid"]
    value = row.get(name)
    return "" if value is None else value


def _figures(sums: tuple[int, float, int]) -> dict[str, Any]:
    scored, summed, good_count = sums
    return {
        "scored": scored,
        "mean_score": round(summed / scored, 4) if scored else None,
        "success_rate": round(good_count / scored, 4) if scored else None,
    }
