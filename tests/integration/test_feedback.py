"""Scoring answers, as a user meets it: `llmspool feedback` on an answer the daemon relayed,
then `llmspool costs --by operation,model` showing the score beside the spend; and the
refusals (a score out of range, an unknown answer, another user's answer)."""

from __future__ import annotations

import csv
import io
import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from llmspool.store.backend import DATABASE_NAME

from tests.support.processes import Daemon, python_command, unix_request
from tests.support.users import as_user, can_create_users, temporary_users


def ask(daemon: Daemon, text: str, operation: str) -> dict[str, Any]:
    status, answer = unix_request(
        daemon.socket_path, "POST", "/v1/chat/completions",
        orjson.dumps({"model": "gpt-4o-mini", "max_tokens": 8,
                      "messages": [{"role": "user", "content": text}]}),
        {"content-type": "application/json", "x-llmspool-operation": operation})
    assert status == 200, answer
    return dict(answer)


def cli(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        python_command(*args, "--socket", str(daemon.socket_path)),
        capture_output=True, text=True, timeout=60, env=daemon.env, check=False)


def feedback(daemon: Daemon, body: dict[str, Any]) -> tuple[int, Any]:
    return unix_request(daemon.socket_path, "POST", "/v1/feedback", orjson.dumps(body),
                        {"content-type": "application/json"})


def test_a_scored_answer_shows_beside_its_cost(daemon: Daemon) -> None:
    good = ask(daemon, "summarise the plot of Hamlet", "summaries")
    bad = ask(daemon, "summarise the plot of Macbeth", "summaries")
    ask(daemon, "translate hello", "translation")  # answered, never scored

    done = cli(daemon, "feedback", good["id"], "--score", "0.8", "--label", "good")
    assert done.returncode == 0, done.stderr
    assert good["id"] in done.stdout and "0.8" in done.stdout
    done = cli(daemon, "feedback", bad["id"], "--score", "0.2", "--comment", "missed the ghost")
    assert done.returncode == 0, done.stderr

    shown = cli(daemon, "costs", "--by", "operation,model", "--json")
    assert shown.returncode == 0, shown.stderr
    report = orjson.loads(shown.stdout)
    rows = {row["operation"]: row for row in report["rows"]}
    assert rows["summaries"]["requests"] == 2
    assert rows["summaries"]["scored"] == 2
    assert rows["summaries"]["mean_score"] == pytest.approx(0.5)
    assert rows["summaries"]["success_rate"] == pytest.approx(0.5)  # 0.8 >= 0.5, 0.2 is not
    assert rows["translation"]["scored"] == 0
    assert rows["translation"]["mean_score"] is None
    assert report["total"]["scored"] == 2

    # A stricter threshold, and a score given again replaces the first.
    assert cli(daemon, "feedback", bad["id"], "--score", "0.9").returncode == 0
    strict = orjson.loads(cli(daemon, "costs", "--by", "operation,model", "--json",
                              "--good", "0.85").stdout)
    summaries = next(row for row in strict["rows"] if row["operation"] == "summaries")
    assert summaries["scored"] == 2
    assert summaries["mean_score"] == pytest.approx(0.85)
    assert summaries["success_rate"] == pytest.approx(0.5)  # only the 0.9

    as_csv = cli(daemon, "costs", "--by", "operation,model", "--csv")
    lines = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    line = next(line for line in lines if line["operation"] == "summaries")
    assert (line["scored"], line["mean_score"], line["success_rate"]) == ("2", "0.85", "1.0")
    assert "spend_usd" in line  # the cost columns are still there

    table = cli(daemon, "costs", "--by", "operation,model")
    assert table.returncode == 0, table.stderr
    assert "scored" in table.stdout and "success" in table.stdout
    assert "100%" in table.stdout  # 0.8 and 0.9, both at least 0.5


def test_a_report_without_scores_is_unchanged(daemon: Daemon) -> None:
    ask(daemon, "what is 2+2", "maths")
    report = orjson.loads(cli(daemon, "costs", "--by", "operation", "--json").stdout)
    assert "scored" not in report["total"]
    header = cli(daemon, "costs", "--by", "operation", "--csv").stdout.splitlines()[0]
    assert "scored" not in header


def test_feedback_refuses_bad_scores_and_unknown_answers(daemon: Daemon) -> None:
    answer = ask(daemon, "name a colour", "colours")
    for score in (1.5, -0.1, "high", True):
        status, error = feedback(daemon, {"response_id": answer["id"], "score": score})
        assert status == 400, (score, error)
        assert error["error"]["param"] == "score"
    status, error = feedback(daemon, {"response_id": answer["id"]})
    assert (status, error["error"]["param"]) == (400, "score")
    status, error = feedback(daemon, {"score": 0.5})
    assert (status, error["error"]["param"]) == (400, "response_id")
    status, error = feedback(daemon, {"response_id": answer["id"], "score": 0.5,
                                      "label": "x" * 101})
    assert (status, error["error"]["param"]) == (400, "label")
    status, error = feedback(daemon, {"response_id": "chatcmpl-nobody-ever", "score": 0.5})
    assert status == 404, error
    done = cli(daemon, "feedback", "chatcmpl-nobody-ever", "--score", "0.5")
    assert done.returncode == 1 and "no answer" in done.stderr
    done = cli(daemon, "feedback", answer["id"], "--score", "2")
    assert done.returncode == 2 and "0 to 1" in done.stderr
    # Nothing refused was kept.
    report = orjson.loads(cli(daemon, "costs", "--by", "operation", "--json").stdout)
    assert "scored" not in report["total"]


def test_an_answer_is_scored_before_and_after_the_daemon_indexes_its_id(
    daemon: Daemon,
) -> None:
    # The daemon indexes response ids after its commits, in a worker thread (issue 17): an
    # answer is found in the entries not yet indexed, then in the index.
    first = ask(daemon, "name a river", "rivers")
    status, _scored = feedback(daemon, {"response_id": first["id"], "score": 0.3})
    assert status == 200
    store = sqlite3.connect(daemon.state_dir / DATABASE_NAME)
    try:
        deadline = time.monotonic() + 20
        while not store.execute("SELECT 1 FROM response_ids WHERE response_id = ?",
                                (first["id"],)).fetchall():
            assert time.monotonic() < deadline, "the answer's id was never indexed"
            time.sleep(0.05)
    finally:
        store.close()
    status, _scored = feedback(daemon, {"response_id": first["id"], "score": 0.9})
    assert status == 200
    report = orjson.loads(cli(daemon, "costs", "--by", "operation", "--json").stdout)
    assert report["rows"][0]["scored"] == 1
    assert report["rows"][0]["mean_score"] == pytest.approx(0.9)


def test_a_job_line_is_scored_by_job_and_custom_id(daemon: Daemon, tmp_path: Path) -> None:
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(orjson.dumps({
        "custom_id": "q1", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "max_tokens": 8,
                 "messages": [{"role": "user", "content": "one line"}]}}) + b"\n")
    submitted = cli(daemon, "submit", str(requests), "--deadline", "10m", "--operation",
                    "graded", "--wait")
    assert submitted.returncode == 0, submitted.stderr
    job = next(word for word in (submitted.stdout + submitted.stderr).split()
               if word.startswith("job_"))
    done = cli(daemon, "feedback", "--job", job, "--line", "q1", "--score", "1")
    assert done.returncode == 0, done.stderr
    report = orjson.loads(cli(daemon, "costs", "--by", "operation", "--json").stdout)
    graded = next(row for row in report["rows"] if row["operation"] == "graded")
    assert (graded["scored"], graded["success_rate"]) == (1, 1.0)
    done = cli(daemon, "feedback", "--job", job, "--line", "nope", "--score", "1")
    assert done.returncode == 1


why_not = can_create_users()


@pytest.mark.skipif(why_not is not None and not os.environ.get("CI"),
                    reason=f"needs real Unix users: {why_not}")
def test_another_users_answer_cannot_be_scored(tmp_path: Path, sim: Any) -> None:
    import tempfile

    from tests.support.processes import start_daemon, unix_exchange

    with temporary_users(2) as (users, _group):
        alice, bob = users
        directory = Path(tempfile.mkdtemp(prefix="llmspool-feedback-"))
        directory.chmod(0o755)
        shared = start_daemon(tmp_path, sim.url, socket_path=directory / "d.sock",
                              config_toml='[daemon]\nsocket_mode = "0666"\n')
        try:
            def post(body: dict[str, Any], path: str) -> list[Any]:
                status, answer, _headers = unix_exchange(
                    shared.socket_path, "POST", path, orjson.dumps(body),
                    {"content-type": "application/json"})
                return [status, answer]

            chat = {"model": "gpt-4o-mini", "max_tokens": 5,
                    "messages": [{"role": "user", "content": "mine"}]}
            status, answer = as_user(alice, lambda: post(chat, "/v1/chat/completions"))
            assert status == 200
            score = {"response_id": answer["id"], "score": 0.3}
            status, error = as_user(bob, lambda: post(score, "/v1/feedback"))
            assert status == 404, error
            status, _ = as_user(alice, lambda: post(score, "/v1/feedback"))
            assert status == 200
            # root is an admin: it may score anyone's answer.
            status, _ = feedback(shared, {**score, "score": 0.4})
            assert status == 200
        finally:
            shared.terminate()
            (directory / "d.sock").unlink(missing_ok=True)
            directory.rmdir()
