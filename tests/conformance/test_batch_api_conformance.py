"""Every answer of ``/v1/files`` and ``/v1/batches`` validates against OpenAI's published spec.

The daemon runs on ``llmspool sim``; each route is called in each state a script meets (empty
lists, a batch in progress, finalized, failed at validation, cancelled, errors), and each JSON
answer is checked by a full JSON Schema validator against the spec's schema for that route
(``OpenAIFile``, ``ListFilesResponse``, ``DeleteFileResponse``, ``Batch``,
``ListBatchesResponse``, ``ErrorResponse``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.money import QUICK_BATCHES
from tests.support.openapi_schemas import SPEC, OpenApiSchemas
from tests.support.processes import (
    Daemon,
    Sim,
    start_daemon,
    start_sim,
    unix_exchange,
)
from tests.support.waiting import wait_for

BOUNDARY = "conformance"


@pytest.fixture(scope="module")
def schemas() -> OpenApiSchemas:
    assert SPEC.exists(), f"OpenAI's OpenAPI spec is missing at {SPEC}"
    return OpenApiSchemas(SPEC)


@pytest.fixture
def quick(tmp_path: Path) -> Iterator[Daemon]:
    sim: Sim = start_sim(tmp_path, '[sim.batch]\nturnaround = "1s"\n')
    daemon = start_daemon(tmp_path, sim.url, config_toml=QUICK_BATCHES)
    try:
        yield daemon
    finally:
        daemon.terminate()
        sim.terminate()


def line(custom_id: str, url: str = "/v1/chat/completions") -> bytes:
    body: dict[str, Any] = (
        {"model": "text-embedding-3-small", "input": custom_id} if url == "/v1/embeddings"
        else {"model": "gpt-5-mini", "max_completion_tokens": 4,
              "messages": [{"role": "user", "content": custom_id}]})
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": url,
                         "body": body}) + b"\n"


class Recorder:
    """Calls the daemon and keeps each answer with the schema it must satisfy."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.answers: list[tuple[str, str, Any]] = []

    def call(self, schema: str, method: str, path: str, body: bytes | None = None,
             content_type: str = "application/json", status: int = 200) -> Any:
        got, answer, _headers = unix_exchange(
            self.daemon.socket_path, method, path, body,
            {"content-type": content_type} if body is not None else {})
        assert got == status, (method, path, got, answer)
        self.answers.append((f"{method} {path} -> {got}", schema, answer))
        return answer

    def upload(self, content: bytes, status: int = 200, purpose: str = "batch") -> Any:
        form = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
                f'{purpose}\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
                'filename="in.jsonl"\r\n\r\n').encode() + content + \
            f"\r\n--{BOUNDARY}--\r\n".encode()
        return self.call("OpenAIFile" if status == 200 else "ErrorResponse", "POST",
                         "/v1/files", form, f"multipart/form-data; boundary={BOUNDARY}",
                         status)

    def create(self, file_id: str, endpoint: str = "/v1/chat/completions",
               status: int = 200, **extra: Any) -> Any:
        return self.call("Batch" if status == 200 else "ErrorResponse", "POST", "/v1/batches",
                         orjson.dumps({"input_file_id": file_id, "endpoint": endpoint,
                                       "completion_window": "24h", **extra}), status=status)

    def until(self, batch_id: str, status: str) -> Any:
        return wait_for(
            lambda: (batch := self.call("Batch", "GET", f"/v1/batches/{batch_id}"))["status"]
            == status
            and batch,
            timeout=60,
            every=0.1,
            what=f"batch {batch_id} to be {status}",
        )


def test_every_answer_matches_the_spec(quick: Daemon, schemas: OpenApiSchemas) -> None:
    api = Recorder(quick)
    api.call("ListFilesResponse", "GET", "/v1/files")
    api.call("ListBatchesResponse", "GET", "/v1/batches")

    chat = api.upload(line("a") + line("b"))
    api.call("OpenAIFile", "GET", f"/v1/files/{chat['id']}")
    running = api.create(chat["id"], metadata={"purpose": "conformance"})
    api.call("Batch", "GET", f"/v1/batches/{running['id']}")
    done = api.until(running["id"], "completed")
    assert done["output_file_id"]
    api.call("OpenAIFile", "GET", f"/v1/files/{done['output_file_id']}")

    embeddings = api.upload(line("e1", "/v1/embeddings") + line("e2", "/v1/embeddings"))
    api.until(api.create(embeddings["id"], "/v1/embeddings")["id"], "completed")
    responses = api.upload(orjson.dumps({
        "custom_id": "r", "method": "POST", "url": "/v1/responses",
        "body": {"model": "gpt-5-mini", "input": "hi"}}) + b"\n")
    api.until(api.create(responses["id"], "/v1/responses")["id"], "completed")

    failed = api.create(api.upload(b"{oops\n" + line("a"))["id"])
    assert failed["status"] == "failed"

    # Cancelled at once: its lines stop wherever they are.
    cancelled = api.create(chat["id"], metadata=None)
    api.call("Batch", "POST", f"/v1/batches/{cancelled['id']}/cancel")
    api.until(cancelled["id"], "cancelled")

    api.call("ListFilesResponse", "GET", "/v1/files?limit=2")
    api.call("ListFilesResponse", "GET", "/v1/files?purpose=batch_output&order=asc")
    api.call("ListBatchesResponse", "GET", "/v1/batches?limit=2")
    api.call("ListBatchesResponse", "GET", f"/v1/batches?after={running['id']}")
    api.call("DeleteFileResponse", "DELETE", f"/v1/files/{embeddings['id']}")

    # Errors in OpenAI's shape.
    api.call("ErrorResponse", "GET", f"/v1/files/{embeddings['id']}", status=404)
    api.call("ErrorResponse", "GET", "/v1/batches/batch_unknown", status=404)
    api.create(chat["id"], "/v1/moderations", status=400)
    api.upload(line("x"), status=400, purpose="fine-tune")
    api.call("ErrorResponse", "POST", f"/v1/batches/{running['id']}/cancel", status=400)

    problems = [f"{where} ({schema}): {found}" for where, schema, answer in api.answers
                if (found := schemas.problems(schema, answer))]
    assert not problems, "\n".join(problems)
    statuses = {answer.get("status") for _w, schema, answer in api.answers if schema == "Batch"}
    assert {"in_progress", "completed", "failed", "cancelled"} <= statuses


def test_the_validator_catches_what_the_spec_forbids(schemas: OpenApiSchemas) -> None:
    """The checks above can fail: the shapes a careless server sends are caught."""
    batch = {"id": "batch_1", "object": "batch", "endpoint": "/v1/chat/completions",
             "input_file_id": "file-1", "completion_window": "24h", "status": "completed",
             "created_at": 1}
    assert schemas.problems("Batch", batch) == []
    assert schemas.problems("Batch", {**batch, "completed_at": None})  # null where int
    assert schemas.problems("Batch", {**batch, "status": "done"})
    assert schemas.problems("Batch", {**batch, "request_counts": {"total": 1}})
    listing = {"object": "list", "data": [], "has_more": False}
    assert schemas.problems("ListFilesResponse", listing)  # first_id/last_id required
