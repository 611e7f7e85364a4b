"""The jobs API as its users meet it: the Python client (async and sync) and the ``llmspool``
job commands, run as real subprocesses, against a real daemon in front of ``llmspool sim``."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from llmspool.client import RequestFailed, Spool, SpoolError, SyncSpool

from tests.support.processes import (
    Daemon,
    python_command,
    start_daemon,
    start_sim,
)
from tests.support.waiting import wait_for

MODEL = "gpt-4o-mini"
DEADLINE = "10m"
WAIT = 60.0
# Not sorted, so that "in input order" cannot pass by accident of sorting.
CUSTOM_IDS = ["zeta", "alpha", "mu", "beta", "omega"]
JOB_ID = re.compile(r"^job_\S+$")
TABLE_ROW_LINE_NUMBER = re.compile(r"^\s*[│|]\s*(\d+)\s*[│|]", re.MULTILINE)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One simulator and one daemon for the module: jobs do not interfere with each other."""
    tmp_path = tmp_path_factory.mktemp("jobs")
    sim = start_sim(tmp_path)
    try:
        started = start_daemon(tmp_path, sim.url)
        try:
            yield started
        finally:
            started.terminate()
    finally:
        sim.terminate()


def chat_body(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 8,
            **extra}


def batch_line(custom_id: str, **extra: Any) -> bytes:
    return orjson.dumps({
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": chat_body(f"say something about {custom_id}", **extra),
    })


def write_jsonl(path: Path, custom_ids: list[str]) -> Path:
    path.write_bytes(b"".join(batch_line(custom_id) + b"\n" for custom_id in custom_ids))
    return path


def llmspool(daemon: Daemon, *args: str, stdin: bytes | None = None,
             timeout: float = 90, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, finding the socket through LLMSPOOL_SOCKET (``env``
    changes the environment; an empty value removes a variable)."""
    environment = {**daemon.env, **(env or {})}
    environment = {key: value for key, value in environment.items() if value != ""}
    completed = subprocess.run(
        python_command(*args), env=environment, input=stdin, capture_output=True,
        timeout=timeout,
    )
    return subprocess.CompletedProcess(
        completed.args, completed.returncode, completed.stdout.decode(), completed.stderr.decode()
    )


def submit_file(daemon: Daemon, path: Path, *options: str) -> str:
    submitted = llmspool(daemon, "submit", str(path), "--deadline", DEADLINE, *options)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert JOB_ID.match(job_id), f"stdout should be just the job id: {submitted.stdout!r}"
    return job_id


def parse_jsonl(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def assert_batch_output(lines: list[dict[str, Any]], custom_ids: list[str]) -> None:
    """OpenAI's Batch output format: every custom_id once, in input order, each answered."""
    assert [line["custom_id"] for line in lines] == custom_ids
    for line in lines:
        assert set(line) >= {"id", "custom_id", "response", "error"}
        assert line["id"].startswith("batch_req_")
        assert line["error"] is None, line
        assert line["response"]["status_code"] == 200
        assert line["response"]["request_id"]
        body = line["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"]


def table_line_numbers(text: str) -> set[int]:
    return {int(number) for number in TABLE_ROW_LINE_NUMBER.findall(text)}


# --- the command line ---------------------------------------------------------------------------


def test_submit_prints_only_the_id_then_wait_and_results_give_batch_output(
    daemon: Daemon, tmp_path: Path,
) -> None:
    job_id = submit_file(daemon, write_jsonl(tmp_path / "in.jsonl", CUSTOM_IDS),
                         "--operation", "cli-test", "--tag", "project=atlas")

    waited = llmspool(daemon, "wait", job_id, "--timeout", str(WAIT))
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout == ""
    assert "completed" in waited.stderr

    results = llmspool(daemon, "results", job_id)
    assert results.returncode == 0, results.stderr
    assert_batch_output(parse_jsonl(results.stdout), CUSTOM_IDS)

    shown = llmspool(daemon, "status", job_id, "--json")
    job = orjson.loads(shown.stdout)
    assert job["id"] == job_id
    assert job["operation"] == "cli-test"
    assert job["tags"] == {"project": "atlas"}


def test_status_of_a_job_is_a_table_and_json_and_status_alone_is_the_overview(
    daemon: Daemon, tmp_path: Path,
) -> None:
    job_id = submit_file(daemon, write_jsonl(tmp_path / "in.jsonl", CUSTOM_IDS[:3]))
    assert llmspool(daemon, "wait", job_id, "--timeout", str(WAIT)).returncode == 0

    raw = llmspool(daemon, "status", job_id, "--json")
    assert raw.returncode == 0, raw.stderr
    job = orjson.loads(raw.stdout)
    assert job["object"] == "llmspool.job"
    assert job["status"] == "completed"
    assert job["counts"]["total"] == 3
    assert job["counts"]["succeeded"] == 3
    assert sum(job["by_tier"].values()) == 3
    assert job["cost_usd"] > 0

    table = llmspool(daemon, "status", job_id)
    assert table.returncode == 0, table.stderr
    for label in ("completed", "succeeded", "failed", "cost so far", "saved", "deadline"):
        assert label in table.stdout, table.stdout
    assert re.search(r"succeeded\s*[│|]?\s*3", table.stdout), table.stdout
    for tier in job["by_tier"]:
        assert f"served on {tier}" in table.stdout

    overview = llmspool(daemon, "status")
    assert overview.returncode == 0, overview.stderr
    assert "up for" in overview.stdout


def test_cancelling_a_finished_job_changes_nothing_and_says_so(
    daemon: Daemon, tmp_path: Path,
) -> None:
    job_id = submit_file(daemon, write_jsonl(tmp_path / "in.jsonl", CUSTOM_IDS[:2]))
    assert llmspool(daemon, "wait", job_id, "--timeout", str(WAIT)).returncode == 0

    cancelled = llmspool(daemon, "cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "already completed" in cancelled.stdout
    assert "nothing to cancel" in cancelled.stdout

    job = orjson.loads(llmspool(daemon, "status", job_id, "--json").stdout)
    assert job["status"] == "completed"
    assert job["counts"]["succeeded"] == 2
    assert job["counts"]["cancelled"] == 0


@pytest.mark.parametrize("command", ["status", "wait", "results", "cancel"])
def test_an_unknown_job_is_a_clear_message_and_exit_1(daemon: Daemon, command: str) -> None:
    answered = llmspool(daemon, command, "job_doesnotexist")
    assert answered.returncode == 1
    assert answered.stdout == ""
    assert "job_doesnotexist" in answered.stderr
    assert "Traceback" not in answered.stderr


def test_a_bad_file_is_refused_with_every_bad_line_numbered(
    daemon: Daemon, tmp_path: Path,
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(
        batch_line("good-1") + b"\n"
        + b"{this is not json\n"
        + batch_line("good-3") + b"\n"
        + orjson.dumps({"custom_id": "no-body", "method": "POST",
                        "url": "/v1/chat/completions"}) + b"\n"
    )
    refused = llmspool(daemon, "submit", str(path), "--deadline", DEADLINE)
    assert refused.returncode == 1
    assert refused.stdout == "", "no job id for a refused file"
    assert table_line_numbers(refused.stderr) == {2, 4}, refused.stderr
    assert "no-body" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_on_error_skip_drops_the_bad_lines_lists_them_and_runs_the_rest(
    daemon: Daemon, tmp_path: Path,
) -> None:
    path = tmp_path / "partly-bad.jsonl"
    path.write_bytes(
        batch_line("first") + b"\n"
        + batch_line("second") + b"\n"
        + b'{"custom_id": "broken", "method": "GET"}\n'
        + batch_line("fourth") + b"\n"
    )
    submitted = llmspool(daemon, "submit", str(path), "--deadline", DEADLINE,
                         "--on-error", "skip")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert JOB_ID.match(job_id), "the rejected lines are shown apart from the id"
    assert table_line_numbers(submitted.stderr) == {3}, submitted.stderr
    assert "broken" in submitted.stderr

    results = llmspool(daemon, "results", job_id, "--wait", str(WAIT))
    assert results.returncode == 0, results.stderr
    assert_batch_output(parse_jsonl(results.stdout), ["first", "second", "fourth"])


def test_submit_reads_standard_input_for_dash(daemon: Daemon) -> None:
    data = b"".join(batch_line(custom_id) + b"\n" for custom_id in CUSTOM_IDS[:3])
    submitted = llmspool(daemon, "submit", "-", "--deadline", DEADLINE, stdin=data)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert JOB_ID.match(job_id)

    results = llmspool(daemon, "results", job_id, "--wait", str(WAIT))
    assert results.returncode == 0, results.stderr
    assert "so far" not in results.stderr, "after --wait the job should have finished"
    assert_batch_output(parse_jsonl(results.stdout), CUSTOM_IDS[:3])


def test_submit_wait_output_replaces_the_file_atomically(daemon: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "out" / "results.jsonl"
    out.parent.mkdir()
    out.write_text("old results\n")
    job_id = submit_file(daemon, write_jsonl(tmp_path / "in.jsonl", CUSTOM_IDS),
                         "--wait", "--timeout", str(WAIT), "-o", str(out))

    assert_batch_output(parse_jsonl(out.read_text()), CUSTOM_IDS)
    assert sorted(p.name for p in out.parent.iterdir()) == ["results.jsonl"], "no temp left"

    # A failed download leaves the previous file as it was.
    failed = llmspool(daemon, "results", "job_doesnotexist", "-o", str(out))
    assert failed.returncode == 1
    assert_batch_output(parse_jsonl(out.read_text()), CUSTOM_IDS)
    assert sorted(p.name for p in out.parent.iterdir()) == ["results.jsonl"]

    again = out.parent / "again.jsonl"
    fetched = llmspool(daemon, "results", job_id, "-o", str(again))
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout == ""
    assert again.read_bytes() == out.read_bytes()


def test_submit_wait_without_output_writes_pure_jsonl_to_stdout(
    daemon: Daemon, tmp_path: Path,
) -> None:
    done = llmspool(daemon, "submit", str(write_jsonl(tmp_path / "in.jsonl", CUSTOM_IDS[:2])),
                    "--deadline", DEADLINE, "--wait", "--timeout", str(WAIT))
    assert done.returncode == 0, done.stderr
    assert_batch_output(parse_jsonl(done.stdout), CUSTOM_IDS[:2])
    assert re.search(r"job_\S+", done.stderr), "the id is still shown, on stderr"


def test_wait_exits_1_when_a_request_failed(daemon: Daemon, tmp_path: Path) -> None:
    path = tmp_path / "one-fails.jsonl"
    # The daemon accepts the line; the provider refuses it (max_tokens must be at least 1).
    path.write_bytes(batch_line("fine") + b"\n" + batch_line("refused", max_tokens=0) + b"\n")
    job_id = submit_file(daemon, path)

    waited = llmspool(daemon, "wait", job_id, "--timeout", str(WAIT))
    assert waited.returncode == 1, waited.stderr
    assert "1 failed" in waited.stderr

    lines = parse_jsonl(llmspool(daemon, "results", job_id).stdout)
    assert [line["custom_id"] for line in lines] == ["fine", "refused"]
    refused = lines[1]
    assert refused["error"] is not None or refused["response"]["status_code"] >= 400


def test_jobs_lists_recent_jobs(daemon: Daemon, tmp_path: Path) -> None:
    job_id = submit_file(daemon, write_jsonl(tmp_path / "in.jsonl", CUSTOM_IDS[:1]),
                         "--operation", "listing")
    listed = llmspool(daemon, "jobs", "--limit", "5", "--json")
    assert listed.returncode == 0, listed.stderr
    jobs = orjson.loads(listed.stdout)
    assert jobs[0]["id"] == job_id, "newest first"
    assert len(jobs) <= 5

    table = llmspool(daemon, "jobs")
    assert table.returncode == 0, table.stderr
    assert job_id in table.stdout


def test_commands_say_where_they_looked_when_no_daemon_runs(tmp_path: Path) -> None:
    socket = tmp_path / "nobody-home.sock"
    for args in (("status", "job_x"), ("wait", "job_x"), ("jobs",), ("cancel", "job_x")):
        answered = subprocess.run(
            python_command(*args, "--socket", str(socket)), capture_output=True, text=True,
            timeout=30,
        )
        assert answered.returncode == 4  # not 1: "some request failed" means something else
        assert str(socket) in answered.stderr
        assert "not running" in answered.stderr


def test_cancel_stops_what_has_not_run_and_wait_exits_3(tmp_path: Path) -> None:
    # Slow answers and one request at a time: most of the job is still queued when cancelled.
    sim = start_sim(tmp_path, '[sim]\nlatency = "1s"\n')
    try:
        slow = start_daemon(tmp_path, sim.url, config_toml="[jobs]\nmax_in_flight = 1\n")
        try:
            job_id = submit_file(slow, write_jsonl(tmp_path / "in.jsonl", CUSTOM_IDS))
            cancelled = llmspool(slow, "cancel", job_id)
            assert cancelled.returncode == 0, cancelled.stderr

            waited = llmspool(slow, "wait", job_id, "--timeout", str(WAIT))
            assert waited.returncode == 3, waited.stderr
            job = orjson.loads(llmspool(slow, "status", job_id, "--json").stdout)
            assert job["status"] == "cancelled"
            assert job["counts"]["cancelled"] >= 1
            assert job["counts"]["cancelled"] + job["counts"]["succeeded"] == len(CUSTOM_IDS)
        finally:
            slow.terminate()
    finally:
        sim.terminate()


# --- the Python client --------------------------------------------------------------------------


def test_async_one_liner_gives_the_body_the_api_would_have_answered(daemon: Daemon) -> None:
    async def main() -> Any:
        async with Spool(str(daemon.socket_path)) as spool:
            return await (await spool.submit(chat_body("hello"), deadline=DEADLINE)).result(
                timeout=WAIT
            )

    answer = anyio.run(main)
    assert answer["object"] == "chat.completion"
    assert answer["model"].startswith(MODEL)
    assert answer["choices"][0]["message"]["content"]
    assert answer["usage"]["completion_tokens"] > 0


def test_async_many_requests_are_numbered_waited_and_streamed_in_order(daemon: Daemon) -> None:
    custom_ids = [f"request-{n}" for n in range(1, 5)]

    async def main() -> None:
        async with Spool(str(daemon.socket_path)) as spool:
            handle = await spool.submit(
                [chat_body(f"question {n}") for n in range(4)],
                deadline=DEADLINE, operation="async-test", tags={"suite": "client"},
            )
            seen: list[dict[str, Any]] = []
            job = await handle.wait(WAIT, on_status=seen.append, poll_every=1)
            assert job["status"] == "completed"
            assert (job["counts"]["total"], job["counts"]["succeeded"]) == (4, 4)
            assert job["operation"] == "async-test"
            assert job["tags"] == {"suite": "client"}
            assert seen[-1]["status"] == "completed", "on_status saw the last state"

            streamed = [line async for line in handle.iter_results()]
            assert_batch_output(streamed, custom_ids)
            assert await handle.results() == streamed
            assert await handle.result() == streamed, "a many-request job's result is its lines"
            assert (await spool.jobs(limit=3))[0]["id"] == handle.id

    anyio.run(main)


def test_a_list_bigger_than_a_json_body_may_be_is_submitted_a_line_at_a_time(
    tmp_path: Path,
) -> None:
    """``submit()`` sends its items as a Batch input file: 300 requests hold more JSON values
    than ``[daemon] max_json_values`` lets a JSON body hold, and are all run."""
    sim = start_sim(tmp_path)
    small = start_daemon(tmp_path, sim.url, config_toml="[daemon]\nmax_json_values = 1000\n")
    try:
        with SyncSpool(str(small.socket_path)) as spool:
            handle = spool.submit([chat_body(f"question {n}") for n in range(300)],
                                  deadline=DEADLINE)
            job = handle.wait(WAIT)
        assert (job["counts"]["total"], job["counts"]["succeeded"]) == (300, 300)
    finally:
        small.terminate()
        sim.terminate()


def test_sync_client_one_liner_and_batch_items(daemon: Daemon) -> None:
    with SyncSpool(str(daemon.socket_path)) as spool:
        answer = spool.submit(chat_body("hello"), deadline=DEADLINE).result(timeout=WAIT)
        assert answer["object"] == "chat.completion"

        item = {"custom_id": "mine", "url": "/v1/chat/completions", "body": chat_body("hi")}
        handle = spool.submit([item], deadline=DEADLINE)
        job = handle.wait(WAIT)
        assert job["counts"]["succeeded"] == 1
        assert_batch_output(handle.results(), ["mine"])

        status = spool.job(handle.id).status()
        assert status["id"] == handle.id
        cancelled = handle.cancel()
        assert "nothing to cancel" in cancelled["message"]
        assert cancelled["status"] == "completed"


def test_the_client_and_the_cli_leave_the_default_deadline_to_the_daemon(
        daemon: Daemon, tmp_path: Path) -> None:
    # One default everywhere: the daemon's [jobs] default_deadline (24 h), not the client's own.
    with SyncSpool(str(daemon.socket_path)) as spool:
        submitted = spool.submit([{"custom_id": "d", "url": "/v1/chat/completions",
                                   "body": chat_body("when?")}]).submitted
        jsonl = spool.submit_jsonl(batch_line("e")).submitted
    job_id = llmspool(daemon, "submit", str(write_jsonl(tmp_path / "f.jsonl", ["f"]))).stdout
    _status, by_cli = daemon.get(f"/v1/jobs/{job_id.strip()}")
    for job in (submitted, jsonl, by_cli):
        assert job["deadline_at"] - job["created_at"] == pytest.approx(24 * 3600, abs=5)
    with SyncSpool(str(daemon.socket_path)) as spool:
        for job_id in (submitted["id"], jsonl["id"], by_cli["id"]):
            spool.job(job_id).cancel()


def test_sync_client_jsonl_upload_and_results_stream(daemon: Daemon, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", CUSTOM_IDS)
    with SyncSpool(str(daemon.socket_path)) as spool:
        handle = spool.submit_jsonl(path, deadline=DEADLINE, tags={"from": "file"})
        assert handle.rejected == []
        handle.wait(WAIT)
        with handle.open_results() as results:
            assert results.complete
            assert results.job_status == "completed"
            lines = list(results.iter_lines())
        assert_batch_output(lines, CUSTOM_IDS)
        # A many-line file read back by id: result() is the list of lines.
        assert spool.job(handle.id).result(timeout=WAIT) == lines


def test_client_errors_carry_the_daemons_details(daemon: Daemon) -> None:
    with SyncSpool(str(daemon.socket_path)) as spool:
        with pytest.raises(SpoolError) as unknown:
            spool.job("job_doesnotexist").status()
        assert unknown.value.status == 404
        assert unknown.value.code == "job_not_found"

        bad = batch_line("ok") + b"\n" + b"not json\n"
        with pytest.raises(SpoolError) as refused:
            spool.submit_jsonl(bad, deadline=DEADLINE)
        assert refused.value.status == 400
        assert [line["line"] for line in refused.value.lines or []] == [2]

        skipped = spool.submit_jsonl(bad, deadline=DEADLINE, on_error="skip")
        assert [line["line"] for line in skipped.rejected] == [2]

        with pytest.raises(RequestFailed) as failed:
            spool.submit(chat_body("no room", max_tokens=0), deadline=DEADLINE).result(
                timeout=WAIT
            )
        assert "max_tokens" in str(failed.value)
        assert failed.value.custom_id == "request-1"


def test_async_client_says_the_daemon_is_not_running(tmp_path: Path) -> None:
    socket = tmp_path / "absent.sock"

    async def main() -> None:
        async with Spool(str(socket)) as spool:
            await spool.job("job_x").status()

    with pytest.raises(SpoolError, match="not running") as raised:
        anyio.run(main)
    assert str(socket) in str(raised.value)


# --- where the requests are: status and wait while a batch runs ---------------------------------


def run_in_pty(command: list[str], env: dict[str, str], seconds: float) -> str:
    """What a user sees on a real terminal (80 columns) during ``seconds`` of ``command``."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import termios
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child: the command, on the pty
        os.execvpe(command[0], command, env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    seen = b""
    until = time.monotonic() + seconds
    try:
        while time.monotonic() < until:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(fd, 65536)
                except OSError:
                    break
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)
    return seen.decode(errors="replace")


def test_status_and_wait_say_which_batch_holds_the_requests(tmp_path: Path) -> None:
    # A batch tier that takes a minute: the job's requests sit in one batch meanwhile.
    sim = start_sim(tmp_path, '[sim.batch]\nturnaround = "60s"\n')
    try:
        quick = ('[planner]\nsafety = "1s"\ndefault_standard_latency = "1s"\n'
                 'default_batch_latency = "2s"\n[batch]\nmax_age = "100ms"\npoll_min = "200ms"\n'
                 'poll_max = "500ms"\n')
        daemon = start_daemon(tmp_path, sim.url, config_toml=quick)
        try:
            job_id = submit_file_with(daemon, write_jsonl(tmp_path / "in.jsonl", CUSTOM_IDS),
                                      "--deadline", "1h")
            job = wait_until_batched(daemon, job_id)
            batch_id = job["batches"][0]["id"]
            assert job["batches"][0]["requests_of_job"] == len(CUSTOM_IDS)

            # Piped: a table no narrower than its content, with the batch and its status.
            shown = llmspool(daemon, "status", job_id, env={"COLUMNS": ""})
            assert shown.returncode == 0, shown.stderr
            assert re.search(r"in a batch\s*[│|]\s*5\b", shown.stdout), shown.stdout
            row = next(line for line in shown.stdout.splitlines() if batch_id in line)
            assert "5 requests; in_progress" in row and "…" not in row, row
            assert len(row) > 80  # not cut to 80 columns

            # On a terminal, wait's progress line says what it waits for.
            seen = run_in_pty([*python_command("wait", job_id)], daemon.env, 4.0)
            assert "in batch 5" in seen and batch_id[:12] in seen, seen[-2000:]

            # In a log, wait writes a line saying the same.
            logged = llmspool(daemon, "wait", job_id, "--timeout", "2")
            assert logged.returncode != 0
            assert re.search(rf"{job_id}: 0/5 done; in batch 5 \({batch_id}: in_progress\)",
                             logged.stderr), logged.stderr
        finally:
            daemon.terminate()
    finally:
        sim.terminate()


def submit_file_with(daemon: Daemon, path: Path, *options: str) -> str:
    submitted = llmspool(daemon, "submit", str(path), *options)
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout.strip()


def wait_until_batched(daemon: Daemon, job_id: str) -> dict[str, Any]:
    def batched() -> dict[str, Any] | None:
        job = orjson.loads(llmspool(daemon, "status", job_id, "--json").stdout)
        batches = job.get("batches") or []
        if batches and batches[0]["id"] and batches[0]["status"] == "in_progress":
            return dict(job)
        return None

    return wait_for(batched, timeout=30, every=0.3, what=f"job {job_id} in a batch")
