"""Captured request/answer pairs (migration 0009), for fine-tuning exports.

An operation with ``[operations.NAME] capture = true`` keeps, for each successful chat call,
only what a fine-tuning example needs: the request's messages and tools and the answer's
assistant message, with its owner's uid and an expiry. Interactive calls are written by the
front door (``server/capture.py``); job lines by a trigger on ``job_requests``, in the
transaction that stores their result, for the operations listed in ``capture_operations``
(which ``set_capture_operations`` rewrites from the config at start).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from llmspool.store.records import Viewer

__all__ = ["CapturedPair", "delete_expired_captures", "insert_capture", "read_captures",
           "set_capture_operations"]


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


def set_capture_operations(connection: sqlite3.Connection,
                           retention: Mapping[str, float]) -> None:
    """The operations that capture (name → seconds kept), replacing those of the last start."""
    connection.execute("DELETE FROM capture_operations")
    connection.executemany("INSERT INTO capture_operations VALUES (?, ?)",
                           sorted(retention.items()))


def insert_capture(connection: sqlite3.Connection, pair: CapturedPair) -> None:
    """Keep ``pair`` (a response id already captured is kept once)."""
    connection.execute(
        "INSERT OR IGNORE INTO captures (response_id, uid, operation, provider, model, "
        "messages, tools, answer, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (pair.response_id, pair.uid, pair.operation, pair.provider, pair.model, pair.messages,
         pair.tools, pair.answer, pair.created_at, pair.expires_at))


def delete_expired_captures(connection: sqlite3.Connection, now: float) -> int:
    """Delete the pairs past their expiry; how many went."""
    return connection.execute("DELETE FROM captures WHERE expires_at < ?", (now,)).rowcount


def read_captures(connection: sqlite3.Connection, operation: str, viewer: Viewer, *,
                  since: float | None, min_score: float | None, now: float
                  ) -> Iterator[tuple[str, str, str | None, str]]:
    """(response id, messages, tools, answer) of ``operation``'s unexpired pairs that
    ``viewer`` may see, oldest first; with ``min_score``, only answers scored at least that."""
    conditions = ["c.operation = ?", "c.expires_at >= ?"]
    params: list[object] = [operation, now]
    if not viewer.admin:
        conditions.append("c.uid IS ?")
        params.append(viewer.uid)
    if since is not None:
        conditions.append("c.created_at >= ?")
        params.append(since)
    if min_score is not None:
        conditions.append("c.response_id IN (SELECT response_id FROM feedback "
                          "WHERE response_id IS NOT NULL AND score >= ?)")
        params.append(min_score)
    cursor = connection.execute(
        "SELECT c.response_id, c.messages, c.tools, c.answer FROM captures c WHERE "
        + " AND ".join(conditions) + " ORDER BY c.created_at, c.response_id", params)
    yield from cursor
