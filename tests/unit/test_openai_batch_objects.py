"""``llmspool_openai.batch_objects.remote_batch`` on batch objects shaped as OpenAI sends them
(completed, failed with per-line errors, refused for the enqueued-token limit, expired), and on
malformed ones, which must be refused with ``BadUpstreamAnswer`` naming the field."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from llmspool.core.errors import BadUpstreamAnswer
from llmspool.core.remote_batch import BatchError
from llmspool_openai.batch_objects import remote_batch

# As GET /v1/batches/{id} answers, fields the daemon does not use included.
COMPLETED = orjson.loads(b"""{
  "id": "batch_6820c8a3f1c08190a0c8f0d5b4e2a1f3",
  "object": "batch",
  "endpoint": "/v1/chat/completions",
  "model": "gpt-4o-mini-2024-07-18",
  "errors": null,
  "input_file_id": "file-9GDxXfBq2Uu4bHc6Jm1Wk3",
  "completion_window": "24h",
  "status": "completed",
  "output_file_id": "file-3Xy8Lk2Pq9Vw7Zr4Tn6Bd1",
  "error_file_id": "",
  "created_at": 1747026083,
  "in_progress_at": 1747026090,
  "expires_at": 1747112483,
  "finalizing_at": 1747029301,
  "completed_at": 1747029362,
  "failed_at": null,
  "expired_at": null,
  "cancelling_at": null,
  "cancelled_at": null,
  "request_counts": {"total": 1200, "completed": 1198, "failed": 2},
  "usage": {
    "input_tokens": 91234, "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 20480, "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 111714
  },
  "metadata": {"llmspool_intent": "01JV3Q8Y7ZK2X5M9R4T6W8B0CD", "llmspool_job": "nightly-embed"}
}""")

FAILED_LINES = orjson.loads(b"""{
  "id": "batch_682112be5a4c8190b3a74b0a2a6d0c77",
  "object": "batch",
  "endpoint": "/v1/responses",
  "errors": {
    "object": "list",
    "data": [
      {"code": "invalid_request", "message": "Model 'gpt-4o-minii' not found.",
       "param": "body.model", "line": 3},
      {"code": "duplicate_custom_id",
       "message": "The custom_id for this request is a duplicate of another request.",
       "param": null, "line": 7}
    ]
  },
  "input_file_id": "file-Ab12Cd34Ef56Gh78Ij90Kl",
  "completion_window": "24h",
  "status": "failed",
  "output_file_id": null,
  "error_file_id": null,
  "created_at": 1747063486,
  "in_progress_at": null,
  "expires_at": 1747149886,
  "failed_at": 1747063490,
  "request_counts": {"total": 0, "completed": 0, "failed": 0},
  "metadata": {"llmspool_intent": "01JV4B2M1N0P9Q8R7S6T5U4V3W"}
}""")

TOKEN_LIMIT = orjson.loads(b"""{
  "id": "batch_68211c0f7b9881908f25e4d1c2b3a495",
  "object": "batch",
  "endpoint": "/v1/embeddings",
  "errors": {
    "object": "list",
    "data": [
      {"code": "token_limit_exceeded",
       "message": "",
       "param": null, "line": null}
    ]
  },
  "input_file_id": "file-Zz98Yy76Xx54Ww32Vv10Uu",
  "completion_window": "24h",
  "status": "failed",
  "output_file_id": null,
  "error_file_id": null,
  "created_at": 1747065871,
  "failed_at": 1747065874,
  "request_counts": {"total": 0, "completed": 0, "failed": 0},
  "metadata": null
}""")
TOKEN_LIMIT["errors"]["data"][0]["message"] = (
    "Enqueued token limit reached for text-embedding-3-small in organization org-Qw3Er5Ty7Ui9. "
    "Limit: 3,000,000 enqueued tokens. Please try again once some in_progress batches have been "
    "completed."
)

EXPIRED = orjson.loads(b"""{
  "id": "batch_681f0a9e2c688190a1b2c3d4e5f60718",
  "object": "batch",
  "endpoint": "/v1/chat/completions",
  "errors": null,
  "input_file_id": "file-Mn12Op34Qr56St78Uv90Wx",
  "completion_window": "24h",
  "status": "expired",
  "output_file_id": "file-Ou45Tp67Ut89Fi01Le23Xx",
  "error_file_id": "file-Er45Ro67Rf89Il01Es23Yy",
  "created_at": 1746930334.0,
  "in_progress_at": 1746930340,
  "expires_at": 1747016734,
  "expired_at": 1747016801,
  "request_counts": {"total": 50000, "completed": 41234, "failed": 8766},
  "metadata": {"llmspool_intent": "01JV0000000000000000000000"}
}""")


def test_a_completed_batch() -> None:
    batch = remote_batch("openai", COMPLETED)
    assert batch.id == "batch_6820c8a3f1c08190a0c8f0d5b4e2a1f3"
    assert batch.status == "completed" and batch.terminal
    assert batch.endpoint == "/v1/chat/completions"
    assert batch.input_file_id == "file-9GDxXfBq2Uu4bHc6Jm1Wk3"
    assert batch.output_file_id == "file-3Xy8Lk2Pq9Vw7Zr4Tn6Bd1"
    assert batch.error_file_id is None  # "" reads as no file
    assert batch.created_at == 1747026083.0
    assert (batch.total, batch.completed, batch.failed) == (1200, 1198, 2)
    assert batch.errors == ()
    assert batch.intent == "01JV3Q8Y7ZK2X5M9R4T6W8B0CD"


def test_a_batch_that_failed_validation_lists_its_lines() -> None:
    batch = remote_batch("openai", FAILED_LINES)
    assert batch.status == "failed" and batch.terminal
    assert batch.output_file_id is None and batch.error_file_id is None
    assert batch.errors == (
        BatchError(code="invalid_request", message="Model 'gpt-4o-minii' not found.", line=3,
                   param="body.model"),
        BatchError(code="duplicate_custom_id",
                   message="The custom_id for this request is a duplicate of another request.",
                   line=7, param=None),
    )


def test_a_batch_refused_for_the_enqueued_token_limit() -> None:
    batch = remote_batch("openai", TOKEN_LIMIT)
    assert batch.status == "failed"
    [error] = batch.errors
    assert error.code == "token_limit_exceeded"
    assert "Enqueued token limit reached" in error.message
    assert error.line is None and error.param is None
    assert batch.intent is None  # "metadata": null
    assert (batch.total, batch.completed, batch.failed) == (0, 0, 0)


def test_an_expired_batch_keeps_its_partial_results() -> None:
    batch = remote_batch("openai", EXPIRED)
    assert batch.status == "expired" and batch.terminal
    assert batch.output_file_id == "file-Ou45Tp67Ut89Fi01Le23Xx"
    assert batch.error_file_id == "file-Er45Ro67Rf89Il01Es23Yy"
    assert (batch.total, batch.completed, batch.failed) == (50000, 41234, 8766)
    assert batch.created_at == 1746930334.0


@pytest.mark.parametrize("status", ["validating", "in_progress", "finalizing", "cancelling"])
def test_unfinished_statuses_are_not_terminal(status: str) -> None:
    document = {**COMPLETED, "status": status, "output_file_id": None}
    assert not remote_batch("openai", document).terminal


def _without(document: dict[str, Any], key: str) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    del changed[key]
    return changed


def _with(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    *parents, last = path.split(".")
    target = changed
    for part in parents:
        target = target[part]
    target[last] = value
    return changed


MALFORMED = [
    pytest.param(_without(COMPLETED, "id"), "'id'", id="missing-id"),
    pytest.param(_with(COMPLETED, "id", ""), "'id'", id="empty-id"),
    pytest.param(_without(COMPLETED, "input_file_id"), "'input_file_id'", id="missing-input-file"),
    pytest.param(_with(COMPLETED, "endpoint", 42), "'endpoint'", id="numeric-endpoint"),
    pytest.param(_with(COMPLETED, "status", "done"), "status 'done'", id="bad-status"),
    pytest.param(_without(COMPLETED, "status"), "status None", id="missing-status"),
    pytest.param(_with(COMPLETED, "request_counts.failed", -1), "request_counts.failed",
                 id="negative-count"),
    pytest.param(_with(COMPLETED, "request_counts.total", "1200"), "request_counts.total",
                 id="count-as-text"),
    pytest.param(_with(COMPLETED, "request_counts.completed", True), "request_counts.completed",
                 id="count-as-bool"),
    pytest.param(_with(COMPLETED, "request_counts", [1, 2]), "request_counts",
                 id="counts-not-object"),
    pytest.param(_with(COMPLETED, "created_at", "2025-05-12"), "created_at",
                 id="created-at-as-text"),
    pytest.param(_without(COMPLETED, "created_at"), "created_at", id="missing-created-at"),
    pytest.param(_with(COMPLETED, "metadata", ["a"]), "metadata", id="metadata-not-object"),
    pytest.param(_with(COMPLETED, "output_file_id", 7), "'output_file_id'",
                 id="numeric-output-file"),
    pytest.param(_with(FAILED_LINES, "errors.data", ["oops"]), "errors.data",
                 id="error-entry-not-object"),
    pytest.param(["not", "a", "batch"], "not a JSON object", id="a-list"),
    pytest.param("<html>Bad gateway</html>", "not a JSON object", id="text"),
]


@pytest.mark.parametrize(("document", "named"), MALFORMED)
def test_a_malformed_batch_is_refused_naming_the_field(document: Any, named: str) -> None:
    with pytest.raises(BadUpstreamAnswer) as caught:
        remote_batch("openai-eu", document)
    error = caught.value
    assert named in error.message
    assert "openai-eu" in error.message
    assert error.code == "upstream_shape"
    assert error.status == 502
