"""What the daemon writes is its owner's alone, and the API key is written nowhere: after chat
calls, a job through the Batch API and an upstream error, every file in the state directory is
readable by its owner only, and a planted key appears in no file, no log line and no answer."""

from __future__ import annotations

import secrets
import stat
from pathlib import Path

import orjson

from tests.integration.test_batches import FAST, jsonl, results, submit
from tests.support.processes import start_daemon, start_sim, unix_exchange
from tests.support.waiting import wait_for


def test_state_files_are_private_and_the_key_is_never_written(tmp_path: Path) -> None:
    key = f"sk-planted-{secrets.token_hex(16)}"
    sim = start_sim(tmp_path, '[sim.batch]\nturnaround = "2s"\n')
    daemon = start_daemon(tmp_path, sim.url, config_toml=FAST, env={"OPENAI_API_KEY": key},
                          process=True)
    answers: list[bytes] = []
    try:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        status, answer, _headers = unix_exchange(
            daemon.socket_path, "POST", "/v1/chat/completions", orjson.dumps(body),
            {"content-type": "application/json"})
        assert status == 200
        answers.append(orjson.dumps(answer))
        job = submit(daemon, jsonl(3))
        # The batch's input file, while it exists (it is deleted once the results are in).
        batch_files = wait_for(lambda: list(daemon.state_dir.rglob("*.jsonl")),
                               what="a batch file")
        modes = {str(path): stat.S_IMODE(path.stat().st_mode) for path in batch_files}
        assert all(mode & 0o077 == 0 for mode in modes.values()), modes
        answers.append(orjson.dumps(results(daemon, job["id"])))
        # An upstream error passes through: its message must not echo the key either.
        sim.set_faults({"kind": "status", "status": 401, "count": 1})
        status, answer, _headers = unix_exchange(
            daemon.socket_path, "POST", "/v1/chat/completions", orjson.dumps(body),
            {"content-type": "application/json"})
        assert status == 401
        answers.append(orjson.dumps(answer))
    finally:
        daemon.terminate()
        sim.terminate()
    files = [path for path in daemon.state_dir.rglob("*") if path.is_file()]
    assert any(path.name == "llmspool.sqlite3" for path in files)
    shared = {str(path): oct(stat.S_IMODE(path.stat().st_mode)) for path in files
              if stat.S_IMODE(path.stat().st_mode) & 0o077}
    assert shared == {}, f"readable by others: {shared}"
    for path in [*files, daemon.log_path]:
        assert key.encode() not in path.read_bytes(), f"the API key is in {path}"
    assert all(key.encode() not in answer for answer in answers)
