"""Budgets over the real socket: a call that would break a cap is refused before any upstream
call (HTTP 402, its own code, the cap named); unknown models follow the operator's policy;
spend and budgets carry on across a kill -9; billing follows the tier actually served."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from llmspool.core.calls import Tier, Usage
from llmspool.core.pricing import load_price_table, usd

from tests.support.processes import Daemon, Sim, start_daemon, start_sim, unix_request

JSON = {"content-type": "application/json"}


def chat(daemon: Daemon, model: str = "gpt-4o-mini", max_tokens: int = 20,
         headers: dict[str, str] | None = None, **extra: Any) -> tuple[int, Any, ]:
    body = orjson.dumps({"model": model, "max_tokens": max_tokens,
                         "messages": [{"role": "user", "content": "hello there"}], **extra})
    return unix_request(daemon.socket_path, "POST", "/v1/chat/completions", body,
                        {**JSON, **(headers or {})})


def upstream_calls(sim: Sim) -> int:
    return int(sim.stats()["requests"]["total"])


def test_per_request_cap_refuses_before_calling_upstream(tmp_path: Path, sim: Sim) -> None:
    # gpt-4o output is $10 per 1M tokens: 1,000 max tokens may cost $0.01 > $0.001.
    daemon = start_daemon(tmp_path, sim.url, config_toml="[budgets]\nper_request_usd = 0.001\n")
    try:
        status, answer = chat(daemon, model="gpt-4o", max_tokens=1000)
        assert status == 402
        error = answer["error"]
        assert error["code"] == "budget_per_request" and error["type"] == "budget_exceeded"
        assert "[budgets] per_request_usd" in error["message"] and "$0.001" in error["message"]
        assert upstream_calls(sim) == 0
        status, _ = chat(daemon, model="gpt-4o", max_tokens=10)  # small enough
        assert status == 200
    finally:
        daemon.terminate()


def test_daily_cap_holds_and_status_shows_it(tmp_path: Path, sim: Sim) -> None:
    # gpt-4o-mini, 20 output tokens: each call reserves ~$0.000014; four fit in $0.00006.
    daemon = start_daemon(tmp_path, sim.url, config_toml=(
        "[budgets]\ndaily_usd = 0.00006\nwarn_fraction = 0.5\n"
    ))
    try:
        answers = [chat(daemon) for _ in range(10)]
        statuses = [status for status, _ in answers]
        assert statuses.count(200) >= 2 and statuses[-1] == 402
        assert statuses == sorted(statuses)  # once refused, refused: the day's cap is spent
        refusal = answers[-1][1]["error"]
        assert refusal["code"] == "budget_day" and "spent" in refusal["message"]
        assert upstream_calls(sim) == statuses.count(200)
        _, report = daemon.get("/v1/status")
        ledger = report["ledger"]
        assert ledger["spend_today_usd"] <= 0.00006
        assert ledger["refused_by_budget"] == statuses.count(402)
        assert ledger["budgets"][0]["cap"] == "[budgets] daily_usd"
        assert [w["cap"] for w in ledger["warnings"]] == ["[budgets] daily_usd"]
        assert ledger["calls_reserved"] == 0
        assert "budget warning" in daemon.log()
    finally:
        daemon.terminate()


def test_session_and_operation_caps(tmp_path: Path, sim: Sim) -> None:
    daemon = start_daemon(tmp_path, sim.url, config_toml="""
[budgets]
session_usd = 0.00002

[budgets.operations.evals]
daily_usd = 0.00002
""")
    try:
        session = {"x-llmspool-session": "notebook-7"}
        results = [chat(daemon, headers=session)[0] for _ in range(4)]
        assert results[0] == 200 and results[-1] == 402
        assert chat(daemon, headers=session)[1]["error"]["code"] == "budget_session"
        assert chat(daemon, headers={"x-llmspool-session": "another"})[0] == 200
        evals = {"x-llmspool-operation": "evals"}
        results = [chat(daemon, headers=evals)[0] for _ in range(4)]
        assert results[-1] == 402
        assert chat(daemon, headers=evals)[1]["error"]["code"] == "budget_operation"
        assert chat(daemon)[0] == 200  # other work is not held by the evals cap
    finally:
        daemon.terminate()


def test_budgets_carry_on_after_kill_9(tmp_path: Path, sim: Sim) -> None:
    config = "[budgets]\ndaily_usd = 0.00006\n"
    daemon = start_daemon(tmp_path, sim.url, config_toml=config, process=True)
    try:
        assert chat(daemon)[0] == 200 and chat(daemon)[0] == 200
        _, before = daemon.get("/v1/ledger?limit=10")
        daemon.process.kill()
        daemon.process.wait(10)
        daemon = start_daemon(tmp_path, sim.url, config_toml=config)
        _, after = daemon.get("/v1/ledger?limit=10")
        settled = sum(entry["cost_usd"] for entry in after["entries"])
        assert after["spend_today_usd"] == pytest.approx(settled)
        assert after["spend_today_usd"] == pytest.approx(before["spend_today_usd"])
        assert after["calls_reserved"] == 0
        statuses = [chat(daemon)[0] for _ in range(6)]
        assert statuses[-1] == 402  # the cap counts what was spent before the crash
    finally:
        daemon.terminate()


def test_unknown_model_refused_or_admitted_at_the_ceiling(tmp_path: Path) -> None:
    sim = start_sim(tmp_path, '[sim]\nmodels = ["gpt-4o-mini", "my-finetune"]\n')
    providers = '[providers.openai]\nmodels = ["gpt-4o-mini", "my-finetune"]\n'
    daemon = start_daemon(tmp_path, sim.url, config_toml=providers)
    try:
        status, answer = chat(daemon, model="my-finetune")
        assert status == 400 and answer["error"]["code"] == "model_unpriced"
        assert "unknown_model" in answer["error"]["message"]
        assert upstream_calls(sim) == 0
    finally:
        daemon.terminate()
    (tmp_path / "second").mkdir()
    daemon = start_daemon(tmp_path / "second", sim.url, config_toml=providers + (
        '[budgets]\nunknown_model = "ceiling"\nunknown_model_ceiling_usd = 0.25\n'
        "daily_usd = 0.6\n"
    ))
    try:
        assert [chat(daemon, model="my-finetune")[0] for _ in range(3)] == [200, 200, 402]
        _, ledger = daemon.get("/v1/ledger?limit=5")
        entry = ledger["entries"][0]
        assert entry["flag"] == "unpriced" and entry["cost_usd"] == pytest.approx(0.25)
    finally:
        daemon.terminate()
        sim.terminate()


def test_billing_follows_the_served_tier(tmp_path: Path, sim: Sim) -> None:
    daemon = start_daemon(tmp_path, sim.url, config_toml="[flex]\nmax_retries = 0\n")
    try:
        sim.request("POST", "/_sim/flex", {"unavailable": True})
        status, answer = chat(daemon, model="gpt-5-mini", service_tier="flex")
        assert status == 200 and answer["service_tier"] == "default"  # asked flex, fell back
        _, ledger = daemon.get("/v1/ledger?limit=1")
        entry = ledger["entries"][0]
        usage = Usage(answer["usage"]["prompt_tokens"], 0, answer["usage"]["completion_tokens"])
        standard = load_price_table().price("openai", "gpt-5-mini", Tier.STANDARD)
        assert standard is not None
        assert entry["tier"] == "standard"
        assert entry["cost_usd"] == pytest.approx(usd(standard.cost(usage)))
        assert entry["saving_source"] is None
        sim.request("POST", "/_sim/flex", {"unavailable": False})
        status, answer = chat(daemon, model="gpt-5-mini", service_tier="flex")
        _, ledger = daemon.get("/v1/ledger?limit=1")
        assert ledger["entries"][0]["tier"] == "flex"
        assert ledger["entries"][0]["saving_source"] == "tier"
        assert ledger["entries"][0]["cost_usd"] == pytest.approx(
            ledger["entries"][0]["standard_cost_usd"] / 2
        )
    finally:
        daemon.terminate()
