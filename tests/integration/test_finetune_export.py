"""Captured answers exported for fine-tuning, as a user meets it: an operation with
``capture = true`` keeps its chat calls (whole, streamed, job lines), and
``llmspool export finetune`` writes them as OpenAI chat fine-tuning JSONL, with a
deterministic validation split and a ``--min-score`` filter; an operation without capture
exports nothing."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.processes import Daemon, python_command, start_daemon, start_sim, unix_request

CONFIG = '[operations.support]\ncapture = true\n[operations.plain]\ncache = "off"\n'


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp_path = tmp_path_factory.mktemp("capture")
    sim = start_sim(tmp_path)
    try:
        started = start_daemon(tmp_path, sim.url, config_toml=CONFIG)
        try:
            yield started
        finally:
            started.terminate()
    finally:
        sim.terminate()


def ask(daemon: Daemon, text: str, operation: str, **extra: Any) -> Any:
    status, answer = unix_request(
        daemon.socket_path, "POST", "/v1/chat/completions",
        orjson.dumps({"model": "gpt-4o-mini", "max_tokens": 12,
                      "messages": [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": text}], **extra}),
        {"content-type": "application/json", "x-llmspool-operation": operation})
    assert status == 200, answer
    return answer


def cli(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(python_command(*args, "--socket", str(daemon.socket_path)),
                          capture_output=True, text=True, timeout=60, env=daemon.env,
                          check=False)


def export(daemon: Daemon, output: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = cli(daemon, "export", "finetune", "-o", str(output), *args)
    assert done.returncode == 0, done.stderr
    return done


def examples(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def assert_finetuning_jsonl(lines: list[dict[str, Any]]) -> None:
    """What OpenAI's chat fine-tuning format asks of every line."""
    for example in lines:
        messages = example["messages"]
        assert messages and all(m["role"] in ("system", "user", "assistant", "tool")
                                for m in messages)
        assert messages[-1]["role"] == "assistant"
        assert isinstance(messages[-1].get("content"), str) or messages[-1].get("tool_calls")


def test_captured_answers_export_as_finetuning_data(daemon: Daemon, tmp_path: Path) -> None:
    answers = [ask(daemon, f"question number {n}", "support") for n in range(12)]
    ask(daemon, "not for training", "plain")

    out = tmp_path / "train.jsonl"
    done = export(daemon, out, "--operation", "support")
    lines = examples(out)
    assert len(lines) == 12
    assert "12 examples" in done.stdout and "tokens" in done.stdout
    assert_finetuning_jsonl(lines)
    by_question = {line["messages"][1]["content"]: line for line in lines}
    first = by_question["question number 0"]
    assert first["messages"][0] == {"role": "system", "content": "Be brief."}
    assert first["messages"][-1]["content"] == answers[0]["choices"][0]["message"]["content"]

    # The split: held out by answer, the same on every export, and nothing lost.
    split = tmp_path / "split.jsonl"
    export(daemon, split, "--operation", "support", "--validation", "0.5")
    train, held = examples(split), examples(tmp_path / "split.validation.jsonl")
    assert len(train) + len(held) == 12 and train and held
    export(daemon, tmp_path / "again.jsonl", "--operation", "support", "--validation", "0.5")
    assert examples(tmp_path / "again.jsonl") == train
    assert examples(tmp_path / "again.validation.jsonl") == held
    assert_finetuning_jsonl(train + held)

    # --min-score: only the answers scored at least that.
    assert cli(daemon, "feedback", answers[3]["id"], "--score", "0.9").returncode == 0
    assert cli(daemon, "feedback", answers[4]["id"], "--score", "0.2").returncode == 0
    best = tmp_path / "best.jsonl"
    export(daemon, best, "--operation", "support", "--min-score", "0.7")
    assert [line["messages"][1]["content"] for line in examples(best)] == [
        "question number 3"]


def test_an_operation_without_capture_exports_nothing(daemon: Daemon, tmp_path: Path) -> None:
    ask(daemon, "plain question", "plain")
    out = tmp_path / "plain.jsonl"
    done = export(daemon, out, "--operation", "plain")
    assert examples(out) == []
    assert "0 examples" in done.stdout


def test_a_streamed_answer_is_captured_whole(daemon: Daemon, tmp_path: Path) -> None:
    status, raw = unix_request(
        daemon.socket_path, "POST", "/v1/chat/completions",
        orjson.dumps({"model": "gpt-4o-mini", "max_tokens": 30, "stream": True,
                      "messages": [{"role": "user", "content": "stream me a story"}]}),
        {"content-type": "application/json", "x-llmspool-operation": "support"})
    assert status == 200
    text, response_id = "", None
    for line in raw.splitlines():
        if line.startswith(b"data: {"):
            event = orjson.loads(line[6:])
            response_id = response_id or event["id"]
            for choice in event.get("choices") or ():
                text += choice["delta"].get("content") or ""
    assert text and response_id
    out = tmp_path / "stream.jsonl"
    export(daemon, out, "--operation", "support")
    streamed = [line for line in examples(out)
                if line["messages"][0]["content"] == "stream me a story"]
    assert len(streamed) == 1
    assert streamed[0]["messages"][-1] == {"role": "assistant", "content": text}


def test_job_lines_are_captured(daemon: Daemon, tmp_path: Path) -> None:
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(b"".join(orjson.dumps({
        "custom_id": f"line{n}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "max_tokens": 8,
                 "messages": [{"role": "user", "content": f"job question {n}"}]}}) + b"\n"
        for n in range(3)))
    done = cli(daemon, "submit", str(requests), "--deadline", "10m", "--operation", "support",
               "--wait")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "jobs.jsonl"
    export(daemon, out, "--operation", "support")
    asked = {line["messages"][0]["content"] for line in examples(out)}
    assert {f"job question {n}" for n in range(3)} <= asked
    assert_finetuning_jsonl(examples(out))


def test_export_refuses_bad_arguments(daemon: Daemon) -> None:
    status, error = unix_request(daemon.socket_path, "GET",
                                 "/v1/exports/finetune?operation=support&min_score=3")
    assert (status, error["error"]["param"]) == (400, "min_score")
    status, error = unix_request(daemon.socket_path, "GET", "/v1/exports/finetune")
    assert (status, error["error"]["param"]) == (400, "operation")
