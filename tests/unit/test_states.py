"""The state enums change nothing a user sees: the strings in rows, answers and the client."""

from __future__ import annotations

import sqlite3

import orjson
from llmspool.client import TERMINAL_STATUSES
from llmspool.core.remote_batch import STATUSES, TERMINAL
from llmspool.core.states import (
    BATCH_STATE_TERMINAL,
    BATCH_STATUS_TERMINAL,
    JOB_TERMINAL,
    REQUEST_TERMINAL,
    BatchState,
    BatchStatus,
    JobStatus,
    RequestState,
)


def test_values_are_the_strings_stored_and_sent() -> None:
    # The strings of migrations/0002_jobs.sql and 0004_batches.sql and of OpenAI's Batch API:
    # changing one would orphan stored rows and break clients.
    assert [s.value for s in JobStatus] == ["in_progress", "completed", "cancelled"]
    assert [s.value for s in RequestState] == ["queued", "succeeded", "failed", "cancelled"]
    assert [s.value for s in BatchState] == ["intent", "uploaded", "submitted", "finished"]
    assert {s.value for s in BatchStatus} == {
        "validating", "failed", "in_progress", "finalizing", "completed", "expired",
        "cancelling", "cancelled"}


def test_terminal_sets() -> None:
    assert sorted(JOB_TERMINAL) == ["cancelled", "completed"]
    assert sorted(REQUEST_TERMINAL) == ["cancelled", "failed", "succeeded"]
    assert sorted(BATCH_STATE_TERMINAL) == ["finished"]
    assert sorted(BATCH_STATUS_TERMINAL) == ["cancelled", "completed", "expired", "failed"]


def test_members_serialise_and_bind_as_their_strings() -> None:
    answer = {"status": JobStatus.IN_PROGRESS, "states": [RequestState.QUEUED]}
    assert orjson.dumps(answer) == b'{"status":"in_progress","states":["queued"]}'
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE t (state TEXT)")
    connection.execute("INSERT INTO t VALUES (?)", (RequestState.QUEUED,))
    assert connection.execute(
        "SELECT typeof(state) FROM t WHERE state = 'queued'").fetchall() == [("text",)]
    assert f"{BatchStatus.CANCELLING}" == "cancelling"


def test_public_sets_stay_plain_strings() -> None:
    # Printed and serialised by callers and plugins: no enum reprs.
    assert sorted(TERMINAL_STATUSES) == ["cancelled", "completed", "expired", "failed"]
    for names in (TERMINAL_STATUSES, STATUSES, TERMINAL):
        assert all(type(name) is str for name in names)
    assert sorted(TERMINAL) == ["cancelled", "completed", "expired", "failed"]
