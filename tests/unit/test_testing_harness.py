"""llmspool.testing: what the in-process harness refuses, and that it runs a real daemon."""

from __future__ import annotations

from pathlib import Path

import pytest
from llmspool.core.config_load import load_config
from llmspool.testing import running_daemon, running_sim

from tests.support.processes import unix_request


def environ(tmp_path: Path, upstream: str, **extra: str) -> dict[str, str]:
    return {"LLMSPOOL_SOCKET": str(tmp_path / "d.sock"),
            "LLMSPOOL_STATE_DIR": str(tmp_path / "state"),
            "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": upstream, **extra}


def test_crash_points_are_refused_before_anything_starts(tmp_path: Path) -> None:
    env = environ(tmp_path, "http://127.0.0.1:9/v1", LLMSPOOL_CRASH_AT="batch.after_upload")
    config = load_config(None, environ=env)
    with pytest.raises(ValueError, match="LLMSPOOL_CRASH_AT"), running_daemon(config, environ=env):
        pass
    assert not (tmp_path / "d.sock").exists()


def test_a_daemon_in_this_process_answers_and_stops_clean(tmp_path: Path) -> None:
    with running_sim() as sim:
        env = environ(tmp_path, sim.url)
        with running_daemon(load_config(None, environ=env), environ=env) as daemon:
            status, body = unix_request(daemon.socket_path, "POST", "/v1/chat/completions",
                                        b'{"model": "gpt-4o-mini", "messages": '
                                        b'[{"role": "user", "content": "hi"}]}',
                                        {"content-type": "application/json"})
            assert status == 200 and body["choices"][0]["message"]["content"]
        assert not daemon.running()
        assert not daemon.socket_path.exists()  # removed at the stop, as SIGTERM does
        assert "llmspool stopped" in daemon.log()
