"""The Anthropic plugin's Message Batches half, piece by piece: batch objects read into the
daemon's statuses, results translated to the daemon's result lines (only this intent's, refused
requests joined), and the daemon's input lines translated into one create call.

End to end (the simulator's Message Batches, kill -9 at each step) is in
tests/integration/test_batches.py, parametrised over both batch providers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from llmspool.core.batch_lines import BatchFiles, ResultWriter
from llmspool.core.errors import BadUpstreamAnswer
from llmspool.core.wire import usage_of
from llmspool_anthropic.batches import (
    refused_path,
    remote_batch,
    tagged,
    translate_results,
    untagged,
)

INTENT = "1764633600-a1b2c3d4e5f6"


def batch_object(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": "msgbatch_013Zva2CMHLNnXjNJJKqJ2EF", "type": "message_batch",
        "processing_status": "in_progress",
        "request_counts": {"processing": 3, "succeeded": 1, "errored": 0, "canceled": 0,
                           "expired": 0},
        "ended_at": None, "created_at": "2026-12-02T10:00:00.5Z",
        "expires_at": "2026-12-03T10:00:00.5Z", "archived_at": None,
        "cancel_initiated_at": None, "results_url": None,
    }
    document.update(changes)
    return document


@pytest.mark.parametrize(("changes", "status"), [
    ({}, "in_progress"),
    ({"processing_status": "canceling", "cancel_initiated_at": "2026-12-02T10:01:00Z"},
     "cancelling"),
    ({"processing_status": "ended", "results_url": "http://x/results"}, "completed"),
    ({"processing_status": "ended", "cancel_initiated_at": "2026-12-02T10:01:00Z"},
     "cancelled"),
    ({"processing_status": "ended", "request_counts": {
        "processing": 0, "succeeded": 2, "errored": 0, "canceled": 0, "expired": 2}},
     "expired"),
])
def test_batch_statuses_become_the_daemons(changes: dict[str, Any], status: str) -> None:
    batch = remote_batch("anthropic", batch_object(**changes))
    assert batch.status == status
    assert batch.created_at == datetime(2026, 12, 2, 10, 0, 0, 500000, tzinfo=UTC).timestamp()


def test_counts_and_results_url_are_read() -> None:
    batch = remote_batch("anthropic", batch_object(
        processing_status="ended", results_url="http://sim/v1/messages/batches/b/results",
        request_counts={"processing": 0, "succeeded": 5, "errored": 1, "canceled": 2,
                        "expired": 0}))
    assert (batch.total, batch.completed, batch.failed) == (8, 5, 3)
    assert batch.output_file_id == "http://sim/v1/messages/batches/b/results"
    assert batch.intent is None  # a Message Batch cannot say: the custom_ids do


@pytest.mark.parametrize(("changes", "field"), [
    ({"processing_status": "done"}, "processing_status"),
    ({"request_counts": {"processing": -1}}, "request_counts.processing"),
    ({"request_counts": None}, "request_counts"),
    ({"created_at": 1764669600}, "created_at"),
    ({"id": ""}, "batch id"),
])
def test_a_malformed_batch_is_refused_naming_the_field(changes: dict[str, Any],
                                                       field: str) -> None:
    with pytest.raises(BadUpstreamAnswer, match=field):
        remote_batch("anthropic", batch_object(**changes))


def test_the_intent_travels_in_each_custom_id_within_anthropics_rules() -> None:
    upstream = tagged(INTENT, "r123456789012345678")
    assert len(upstream) <= 64 and all(c.isalnum() or c in "_-" for c in upstream)
    assert untagged(INTENT, upstream) == "r123456789012345678"
    assert untagged("1764633600-ffffffffffff", upstream) is None


def message(text: str, **usage: int) -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 3, **usage}}


def test_results_become_the_daemons_result_lines(tmp_path: Path) -> None:
    files = BatchFiles(INTENT, tmp_path / f"{INTENT}.input.jsonl",
                       tmp_path / f"{INTENT}.output.jsonl", tmp_path / f"{INTENT}.errors.jsonl")
    with ResultWriter(refused_path(files.input, INTENT)) as refused:
        refused.answered("r9", 400, {"error": {"message": "n > 1", "type":
                                               "invalid_request_error"}})
        refused.commit()
    raw = tmp_path / "raw.jsonl"
    results = [
        {"custom_id": tagged(INTENT, "r1"), "result": {
            "type": "succeeded", "message": message("hi", cache_read_input_tokens=90)}},
        {"custom_id": tagged(INTENT, "r2"), "result": {"type": "errored", "error": {
            "type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}}},
        {"custom_id": tagged(INTENT, "r3"), "result": {"type": "errored", "error": {
            "type": "error", "error": {"type": "overloaded_error", "message": "busy"}}}},
        {"custom_id": tagged(INTENT, "r4"), "result": {"type": "canceled"}},
        {"custom_id": tagged(INTENT, "r5"), "result": {"type": "expired"}},
        # Another intent's line (a batch taken for this one by mistake) is left out.
        {"custom_id": tagged("1764633600-ffffffffffff", "r6"), "result": {
            "type": "succeeded", "message": message("not ours")}},
    ]
    raw.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in results) + b"not json\n")

    assert translate_results(raw, files) == 6
    lines = {line["custom_id"]: line for line in map(orjson.loads,
                                                       files.output.read_bytes().splitlines())}
    assert set(lines) == {"r1", "r2", "r3", "r4", "r5", "r9"}
    answer = lines["r1"]["response"]
    assert answer["status_code"] == 200
    assert answer["body"]["choices"][0]["message"]["content"] == "hi"
    usage = usage_of(answer["body"])
    assert usage is not None
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (100, 90, 3)
    assert lines["r2"]["response"]["status_code"] == 400
    assert lines["r3"]["response"]["status_code"] == 503  # overloaded: retried
    assert lines["r4"]["error"]["code"] == "batch_cancelled"
    assert lines["r5"]["error"]["code"] == "batch_expired"
    assert lines["r9"]["response"]["status_code"] == 400
    assert not files.output.with_name(files.output.name + ".part").exists()
