"""OpenAI's Files and Batches API on the socket: an unchanged Batch API script works end to end
against the daemon on ``llmspool sim``, batches are jobs (deadline, tiers, cancel), and every
bad input is a clear 4xx in OpenAI's shape with nothing half-created."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.money import QUICK_BATCHES
from tests.support.processes import (
    Daemon,
    Sim,
    openai_client,
    start_daemon,
    start_sim,
    unix_exchange,
    unix_request,
)
from tests.support.waiting import wait_for

SCRIPT = Path(__file__).parent / "scripts" / "openai_batch_script.py"
OUTPUT_KEYS = {"id", "custom_id", "response", "error"}


def chat_line(custom_id: str, model: str = "gpt-5-mini", **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "max_completion_tokens": 5,
                     "messages": [{"role": "user", "content": f"say {custom_id}"}], **body}}


def jsonl(*lines: Any) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def run_script(daemon: Daemon, tmp_path: Path, content: bytes, endpoint: str,
               deadline: str | None = None) -> dict[str, Any]:
    """The user's script, in its own interpreter, with warnings turned into errors (the
    official client parses every answer without one)."""
    path = tmp_path / "requests.jsonl"
    path.write_bytes(content)
    command = [sys.executable, "-W", "error", str(SCRIPT), str(daemon.socket_path), str(path),
               endpoint, *([deadline] if deadline else [])]
    done = subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    summary: dict[str, Any] = orjson.loads(done.stdout)
    return summary


def upload(daemon: Daemon, content: bytes, filename: str = "in.jsonl",
           purpose: str | None = "batch") -> tuple[int, Any]:
    boundary = "llmspool-test-boundary"
    parts = []
    if purpose is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
                     f"{purpose}\r\n".encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="{filename}"\r\nContent-Type: application/jsonl\r\n\r\n'.encode()
                 + content + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return unix_request(daemon.socket_path, "POST", "/v1/files", body,
                        {"content-type": f"multipart/form-data; boundary={boundary}"})


def create(daemon: Daemon, file_id: str, endpoint: str = "/v1/chat/completions",
           headers: dict[str, str] | None = None, **extra: Any) -> tuple[int, Any, dict[str, str]]:
    body = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h", **extra}
    return unix_exchange(daemon.socket_path, "POST", "/v1/batches", orjson.dumps(body),
                         {"content-type": "application/json", **(headers or {})})


def wait_status(daemon: Daemon, batch_id: str, statuses: set[str], timeout: float = 60
                ) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        status, batch = daemon.get(f"/v1/batches/{batch_id}")
        assert status == 200, batch
        return dict(batch) if batch["status"] in statuses else None

    return wait_for(reached, timeout=timeout, every=0.1,
                    what=f"batch {batch_id} to be {' or '.join(sorted(statuses))}")


def stored_files(daemon: Daemon) -> list[str]:
    return sorted(os.listdir(daemon.state_dir / "files"))


@pytest.fixture
def quick_sim(tmp_path: Path) -> Iterator[Sim]:
    running = start_sim(tmp_path, '[sim.batch]\nturnaround = "1s"\ncancel_delay = "300ms"\n')
    try:
        yield running
    finally:
        running.terminate()


def test_an_unchanged_batch_script_gets_its_output_and_error_files(
        daemon: Daemon, sim: Sim, tmp_path: Path) -> None:
    # Line "bad" is refused upstream (no messages): it belongs in the error file.
    # A seed makes them deterministic, so their answers are cached.
    lines = [chat_line(f"q{i}", seed=7) for i in range(5)] + [
        {**chat_line("bad"), "body": {"model": "gpt-5-mini", "messages": []}}]
    summary = run_script(daemon, tmp_path, jsonl(*lines), "/v1/chat/completions", "2m")

    batch = summary["batch"]
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 6, "completed": 5, "failed": 1}
    assert batch["metadata"] == {"description": "nightly eval"}
    assert batch["output_file_id"] and batch["error_file_id"]
    assert batch["created_at"] <= batch["in_progress_at"] <= batch["completed_at"]
    assert batch["usage"]["input_tokens"] > 0 and batch["usage"]["output_tokens"] > 0
    assert batch["usage"]["total_tokens"] == (batch["usage"]["input_tokens"]
                                              + batch["usage"]["output_tokens"])
    assert summary["statuses"][0] == "in_progress" and summary["statuses"][-1] == "completed"
    assert summary["file"]["purpose"] == "batch" and summary["file"]["filename"] == \
        "requests.jsonl"

    # OpenAI's output format, one line per request, every request in exactly one file.
    output, errors = summary["output"], summary["errors"]
    assert sorted(line["custom_id"] for line in output) == [f"q{i}" for i in range(5)]
    assert [line["custom_id"] for line in errors] == ["bad"]
    for line in output + errors:
        assert set(line) == OUTPUT_KEYS, line
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        assert line["response"]["body"]["object"] == "chat.completion"
        assert line["id"].startswith("batch_req_")
    assert errors[0]["response"]["status_code"] == 400
    assert errors[0]["response"]["body"]["error"]["param"] == "messages"

    # The same file again is answered from the response cache, in the same format.
    again = run_script(daemon, tmp_path, jsonl(*lines), "/v1/chat/completions", "2m")
    _status, job = daemon.get("/v1/jobs?limit=1")
    assert job["data"][0]["by_tier"].get("cache") == 5
    assert [set(line) for line in again["output"]] == [OUTPUT_KEYS] * 5
    assert sorted(line["response"]["body"]["id"] for line in again["output"]) == \
        sorted(line["response"]["body"]["id"] for line in output)


def test_responses_and_embeddings_batches(daemon: Daemon, tmp_path: Path) -> None:
    responses = run_script(daemon, tmp_path, jsonl(*(
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/responses",
         "body": {"model": "gpt-5-mini", "input": f"hello {i}", "max_output_tokens": 16}}
        for i in range(3))), "/v1/responses", "2m")
    assert responses["batch"]["status"] == "completed"
    assert {line["response"]["body"]["object"] for line in responses["output"]} == {"response"}
    embeddings = run_script(daemon, tmp_path, jsonl(*(
        {"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": "text-embedding-3-small", "input": [f"text {i}", "more"]}}
        for i in range(3))), "/v1/embeddings", "2m")
    assert embeddings["batch"]["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    for line in embeddings["output"]:
        assert len(line["response"]["body"]["data"]) == 2
    assert embeddings["batch"]["usage"]["input_tokens"] > 0


def test_a_batch_is_a_job_with_the_completion_window_as_deadline(
        daemon: Daemon, tmp_path: Path) -> None:
    status, file = upload(daemon, jsonl(chat_line("a"), chat_line("b", model="gpt-4o-mini")))
    assert status == 200, file
    before = time.time()
    status, batch, headers = create(daemon, file["id"], metadata={"team": "search"})
    assert status == 200, batch
    job_id = headers["x-llmspool-job-id"]
    assert batch["expires_at"] == pytest.approx(before + 86400, abs=5)
    # Planned like any job: a day leaves room for the Batch API, for both models at once
    # (the spooler groups lines per model; OpenAI would want one model per file).
    assert headers["x-llmspool-plan"] == "batch:gpt-4o-mini=1,batch:gpt-5-mini=1" or \
        sorted(headers["x-llmspool-plan"].split(",")) == [
            "batch:gpt-4o-mini=1", "batch:gpt-5-mini=1"]
    status, job = daemon.get(f"/v1/jobs/{job_id}")
    assert status == 200
    assert job["deadline_at"] == pytest.approx(before + 86400, abs=5)
    assert job["tags"] == {"team": "search"}  # metadata tags the job
    # llmspool status shows it like any other job.
    shown = subprocess.run(
        [sys.executable, "-m", "llmspool", "status", job_id, "--socket",
         str(daemon.socket_path), "--json"], capture_output=True, timeout=30, check=False)
    assert shown.returncode == 0, shown.stderr
    assert orjson.loads(shown.stdout)["id"] == job_id

    # A deadline from the header or from metadata instead of the window.
    status, _batch, headers = create(daemon, file["id"], headers={"x-llmspool-deadline": "3m"})
    assert status == 200
    _status, job = daemon.get(f"/v1/jobs/{headers['x-llmspool-job-id']}")
    assert job["deadline_at"] == pytest.approx(time.time() + 180, abs=5)
    assert "batch" not in headers["x-llmspool-plan"]
    status, _batch, headers = create(daemon, file["id"],
                                     metadata={"llmspool_deadline": "2m", "team": "x"})
    assert status == 200
    _status, job = daemon.get(f"/v1/jobs/{headers['x-llmspool-job-id']}")
    assert job["deadline_at"] == pytest.approx(time.time() + 120, abs=5)
    assert job["tags"] == {"team": "x"}


def test_list_batches_and_files_in_pages(daemon: Daemon) -> None:
    client = openai_client(daemon.socket_path)
    made = []
    for index in range(3):
        file = client.files.create(file=(f"in{index}.jsonl", jsonl(chat_line("x"))),
                                   purpose="batch")
        made.append(client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h",
            extra_headers={"x-llmspool-deadline": "2m"}).id)
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == made[::-1][:2] and first.has_more
    assert [b.id for b in client.batches.list(limit=2)] == made[::-1]  # follows the pages
    files = list(client.files.list(limit=2, order="asc", purpose="batch"))
    assert [f.filename for f in files] == ["in0.jsonl", "in1.jsonl", "in2.jsonl"]
    page = client.files.list(limit=1, purpose="batch")
    assert page.data[0].filename == "in2.jsonl" and page.has_more  # newest first
    assert [f.id for f in client.files.list(purpose="nothing")] == []


def test_retrieve_and_delete_files(daemon: Daemon) -> None:
    client = openai_client(daemon.socket_path)
    content = jsonl(chat_line("a"))
    file = client.files.create(file=("a.jsonl", content), purpose="batch",
                               expires_after={"anchor": "created_at", "seconds": 3600})
    assert file.bytes == len(content) and file.expires_at == file.created_at + 3600
    assert client.files.retrieve(file.id) == file
    assert client.files.content(file.id).content == content
    assert stored_files(daemon) == [file.id]
    deleted = client.files.delete(file.id)
    assert deleted.deleted and deleted.id == file.id
    assert stored_files(daemon) == []
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(Exception) as caught:
            call(file.id)
        assert getattr(caught.value, "status_code", None) == 404


def test_cancel_stops_what_has_not_run(tmp_path: Path, quick_sim: Sim) -> None:
    # Batches are sent every 10 minutes here, so the lines wait for theirs when cancelled.
    daemon = start_daemon(tmp_path, quick_sim.url,
                          config_toml=QUICK_BATCHES.replace('max_age = "300ms"', 'max_age = "10m"'))
    try:
        client = openai_client(daemon.socket_path)
        file = client.files.create(file=("c.jsonl", jsonl(*(chat_line(f"c{i}")
                                                           for i in range(4)))), purpose="batch")
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        assert batch.status == "in_progress"
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status in ("cancelling", "cancelled")
        assert cancelling.cancelling_at is not None
        done = wait_status(daemon, batch.id, {"cancelled"})
        assert done["request_counts"] == {"total": 4, "completed": 0, "failed": 4}
        assert "output_file_id" not in done and done["cancelled_at"] >= done["cancelling_at"]
        errors = [orjson.loads(line) for line in
                  client.files.content(done["error_file_id"]).text.splitlines()]
        assert sorted(line["custom_id"] for line in errors) == [f"c{i}" for i in range(4)]
        assert {line["error"]["code"] for line in errors} == {"cancelled"}
        assert quick_sim.stats()["batches"]["created"] == 0  # nothing was sent upstream
        # A batch that has ended cannot be cancelled again.
        status, answer, _ = unix_exchange(daemon.socket_path, "POST",
                                          f"/v1/batches/{batch.id}/cancel", b"", {})
        assert status == 400 and answer["error"]["code"] == "batch_not_cancellable"
    finally:
        daemon.terminate()


def test_a_batch_survives_kill_9_and_still_gets_its_files(tmp_path: Path, quick_sim: Sim
                                                           ) -> None:
    daemon = start_daemon(tmp_path, quick_sim.url, config_toml=QUICK_BATCHES, process=True)
    client = openai_client(daemon.socket_path)
    file = client.files.create(file=("k.jsonl", jsonl(*(chat_line(f"k{i}") for i in range(8)))),
                               purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                  completion_window="24h",
                                  extra_headers={"x-llmspool-deadline": "1h"})
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait(10)
    daemon = start_daemon(tmp_path, quick_sim.url, config_toml=QUICK_BATCHES)
    try:
        done = wait_status(daemon, batch.id, {"completed"}, timeout=90)
        assert done["request_counts"] == {"total": 8, "completed": 8, "failed": 0}
        client = openai_client(daemon.socket_path)
        lines = client.files.content(done["output_file_id"]).text.splitlines()
        assert sorted(orjson.loads(line)["custom_id"] for line in lines) == \
            sorted(f"k{i}" for i in range(8))
    finally:
        daemon.terminate()


def test_a_file_with_bad_lines_fails_validation_with_their_numbers(daemon: Daemon) -> None:
    content = b"".join([
        orjson.dumps(chat_line("ok")) + b"\n",
        b"{not json\n",
        orjson.dumps({**chat_line("emb"), "url": "/v1/embeddings"}) + b"\n",
        orjson.dumps(chat_line("ok")) + b"\n",
        orjson.dumps(chat_line("m", model="no-such-model")) + b"\n",
    ])
    status, file = upload(daemon, content)
    assert status == 200
    status, batch, headers = create(daemon, file["id"])
    assert status == 200 and "x-llmspool-job-id" not in headers
    assert batch["status"] == "failed" and "failed_at" in batch
    errors = batch["errors"]["data"]
    assert [(e["line"], e["code"]) for e in errors] == [
        (2, "invalid_json_line"), (3, "mismatched_endpoint"), (4, "duplicate_custom_id"),
        (5, "model_not_found")]
    assert "does not match the batch's endpoint" in errors[1]["message"]
    # Nothing half-created: no job, no output file.
    _status, jobs = daemon.get("/v1/jobs")
    assert jobs["data"] == []
    status, again = daemon.get(f"/v1/batches/{batch['id']}")
    assert again["status"] == "failed"

    status, empty = upload(daemon, b"\n")
    status, batch, _ = create(daemon, empty["id"])
    assert batch["status"] == "failed" and batch["errors"]["data"][0]["code"] == "empty_file"


@pytest.mark.parametrize(("change", "param", "code"), [
    ({"endpoint": "/v1/moderations"}, "endpoint", "unsupported_endpoint"),
    ({"endpoint": "/v1/nothing"}, "endpoint", "unsupported_endpoint"),
    ({"completion_window": "1h"}, "completion_window", "invalid_completion_window"),
    ({"input_file_id": "file-000000000000000000000000"}, "input_file_id", "file_not_found"),
    ({"input_file_id": None}, "input_file_id", "missing_required_parameter"),
    ({"metadata": {"k": 1}}, "metadata", "invalid_metadata"),
])
def test_a_bad_create_request_is_a_clear_4xx(daemon: Daemon, change: dict[str, Any],
                                             param: str, code: str) -> None:
    _status, file = upload(daemon, jsonl(chat_line("a")))
    body = {"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h", **change}
    status, answer = unix_request(daemon.socket_path, "POST", "/v1/batches",
                                  orjson.dumps({k: v for k, v in body.items() if v is not None}),
                                  {"content-type": "application/json"})
    assert status in (400, 404), answer
    assert answer["error"]["param"] == param and answer["error"]["code"] == code
    assert answer["error"]["message"]
    _status, batches = daemon.get("/v1/batches")
    assert batches["data"] == []  # nothing created


def test_bad_uploads_are_refused_and_leave_nothing(tmp_path: Path, sim: Sim) -> None:
    daemon = start_daemon(tmp_path, sim.url, config_toml='[files]\nmax_size = "1KB"\n')
    try:
        status, answer = upload(daemon, b"x" * 5000)
        assert status == 413 and answer["error"]["code"] == "file_too_large"
        assert "[files] max_size" in answer["error"]["message"]
        for kwargs, param in [({"purpose": None}, "purpose"),
                              ({"purpose": "assistants"}, "purpose"),
                              ({"purpose": "nonsense"}, "purpose"),
                              ({"filename": "in.txt"}, "file")]:
            status, answer = upload(daemon, jsonl(chat_line("a")), **kwargs)
            assert status == 400 and answer["error"]["param"] == param, (kwargs, answer)
        status, answer = unix_request(daemon.socket_path, "POST", "/v1/files", b"{}",
                                      {"content-type": "application/json"})
        assert status == 400 and "multipart/form-data" in answer["error"]["message"]
        _status, files = daemon.get("/v1/files")
        assert files["data"] == [] and stored_files(daemon) == []
        for path in ("/v1/files/file-nope", "/v1/batches/batch_nope"):
            status, answer = daemon.get(path)
            assert status == 404 and answer["error"]["type"] == "invalid_request_error"
    finally:
        daemon.terminate()


def test_files_and_batches_are_deleted_after_retention(tmp_path: Path, sim: Sim) -> None:
    config = '[files]\nretention = "2s"\n'
    daemon = start_daemon(tmp_path, sim.url, config_toml=config)
    try:
        status, file = upload(daemon, jsonl(chat_line("a")))
        status, batch, _ = create(daemon, file["id"], headers={"x-llmspool-deadline": "1m"})
        done = wait_status(daemon, batch["id"], {"completed"})
        assert len(stored_files(daemon)) == 2  # the input and the output
        # The retention (2 s) must pass: ask until both files say they expired.
        for file_id in (file["id"], done["output_file_id"]):
            def gone(file_id: str = file_id) -> tuple[int, Any] | None:
                found = daemon.get(f"/v1/files/{file_id}")
                return found if found[0] == 404 else None

            status, answer = wait_for(gone, timeout=10, every=0.1, what=f"{file_id} to expire")
            assert status == 404 and "expired" in answer["error"]["message"]
    finally:
        daemon.terminate()
    daemon = start_daemon(tmp_path, sim.url, config_toml=config)  # sweeps at start
    try:
        # The sweep runs beside the serving daemon: wait for it, within a bound.
        wait_for(lambda: stored_files(daemon) == [], what="the sweep of the stored files")
        status, _answer = daemon.get(f"/v1/batches/{batch['id']}")
        assert status == 404
    finally:
        daemon.terminate()
