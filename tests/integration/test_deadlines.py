"""Tight deadlines go up, not only down: with ``[planner] allow_priority`` a call whose deadline
is shorter than a standard call's budget is paid for on the priority tier, through the real
daemon and the simulator (which bills what it served)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.support.money import billed_calls
from tests.support.processes import Sim, start_daemon, unix_exchange

BODY = {"model": "gpt-5-mini", "max_tokens": 5,
        "messages": [{"role": "user", "content": "Quick: name a prime."}]}


@pytest.mark.parametrize(("allowed", "served"), [(True, "priority"), (False, "standard")])
def test_a_deadline_shorter_than_a_standard_call_buys_priority_when_allowed(
        tmp_path: Path, sim: Sim, allowed: bool, served: str) -> None:
    daemon = start_daemon(tmp_path, sim.url,
                          config_toml=f"[planner]\nallow_priority = {str(allowed).lower()}\n")
    try:
        # A standard call is budgeted 30 s x 1.5 + 30 s before any is observed: 20 s is short.
        status, body, headers = unix_exchange(
            daemon.socket_path, "POST", "/v1/chat/completions", orjson.dumps(BODY),
            {"content-type": "application/json", "x-llmspool-deadline": "20s"})
        assert status == 200, body
        assert headers["x-llmspool-tier"] == served
        # A deadline with room is never paid up.
        status, body, headers = unix_exchange(
            daemon.socket_path, "POST", "/v1/chat/completions", orjson.dumps(BODY),
            {"content-type": "application/json"})
        assert status == 200 and headers["x-llmspool-tier"] == "standard"
        _, report = daemon.get("/v1/ledger?by=tier,deadline")
    finally:
        daemon.terminate()
    assert [call["tier"] for call in billed_calls(sim)] == [served, "standard"]
    rows = {(row["tier"], row["deadline"]): row["requests"] for row in report["rows"]}
    assert rows == ({(served, "<=1m"): 1, ("standard", "none"): 1} if allowed
                    else {("standard", "<=1m"): 1, ("standard", "none"): 1})
