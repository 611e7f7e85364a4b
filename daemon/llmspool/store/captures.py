"""Captured request/answer pairs (migration 0009), for fine-tuning exports.

An operation with ``[operations.NAME] capture = true`` keeps, for each successful chat call,
only what a fine-tuning example needs: the request's messages and tools and the answer's
assistant message, with its owner's uid and an expiry. Interactive calls are written by the
front door (``server/capture.py``); job lines by a trigger on ``job_requests``, in the
transaction that stores their result, for the operations listed in ``capture_operations``
(which ``set_capture_operations`` rewrites from the config at start).

``read_captures`` reads a page at a time, each page after the last one's (created_at, response
id): an export of any size holds one page in memory, on either backend.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmspool.store.records import Viewer

if TYPE_CHECKING:
    from llmspool.store.connections import Connection

__all__ = ["READ_PAGE", "CapturedPair", "delete_expired_captures", "insert_capture",
           "read_captures", "set_capture_operations"]


READ_PAGE = 500  # the captured pairs read at a time


@dataclass(frozen=True, slots=True)
class CapturedPair:
    """One captured call: its messages, tools and answer as JSON text."""

    response_id: str
    uid: int | None
    operation: str
    provider: str
    model: str
    messages: str
    tools: str | None
    answer: str
    created_at: float
    expires_at: float


def set_capture_operations(connection: Connection,
                           retention: Mapping[str, float]) -> None:
    """The operations that capture (name → seconds kept), replacing those of the last start."""
    connection.execute("DELETE FROM capture_operations")
    connection.executemany("INSERT INTO capture_operations VALUES (?, ?)",
                           sorted(retention.items()))


def insert_capture(connection: Connection, pair: CapturedPair) -> None:
    """Keep ``pair`` (a response id already captured is kept once)."""
    connection.execute(
        "INSERT INTO captures (response_id, uid, operation, provider, model, messages, tools, "
        "answer, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT DO NOTHING",
        (pair.response_id, pair.uid, pair.operation, pair.provider, pair.model, pair.messages,
         pair.tools, pair.answer, pair.created_at, pair.expires_at))


def delete_expired_captures(connection: Connection, now: float) -> int:
    """Delete the pairs past their expiry; how many went."""
    return connection.execute("DELETE FROM captures WHERE expires_at < ?", (now,)).rowcount


def read_captures(connection: Connection, operation: str, viewer: Viewer, *,
                  since: float | None, min_score: float | None, now: float,
                  page: int = READ_PAGE) -> Iterator[tuple[str, str, str | None, str]]:
    """(response id, messages, tools, answer) of ``operation``'s unexpired pairs that
    ``viewer`` may see, oldest first; with ``min_score``, only answers scored at least that.
    Read ``page`` rows at a time, as the caller goes."""
    conditions = ["c.operation = ?", "c.expires_at >= ?"]
    params: list[Any] = [operation, now]
    if not viewer.admin:
        conditions.append("c.uid IS NOT DISTINCT FROM ?")
        params.append(viewer.uid)
    if since is not None:
        conditions.append("c.created_at >= ?")
        params.append(since)
    if min_score is not None:
        conditions.append("c.response_id IN (SELECT response_id FROM feedback "
                          "WHERE response_id IS NOT NULL AND score >= ?)")
        params.append(min_score)
    select = ("SELECT c.response_id, c.messages, c.tools, c.answer, c.created_at FROM captures c "
              "WHERE " + " AND ".join(conditions))
    order = " ORDER BY c.created_at, c.response_id LIMIT ?"
    rows = connection.execute(select + order, [*params, page]).fetchall()
    while rows:
        for response_id, messages, tools, answer, _created_at in rows:
            yield response_id, messages, tools, answer
        if len(rows) < page:
            return
        last_id, last_at = rows[-1][0], rows[-1][4]
        rows = connection.execute(
            select + " AND (c.created_at > ? OR (c.created_at = ? AND c.response_id > ?))"
            + order, [*params, last_at, last_at, last_id, page]).fetchall()
