"""A price file laid over the bundled prices, end to end: the daemon bills a model only that file
prices, every bundled model at its bundled price, and after the file changes and SIGHUP, the
new price, with the bundled ones untouched."""

from __future__ import annotations

import signal
from pathlib import Path

import orjson
import pytest
from llmspool.core.calls import Tier, Usage
from llmspool.core.pricing import load_price_table, usd

from tests.support.processes import (
    UNLIMITED_SIM,
    Daemon,
    start_daemon,
    start_sim,
    unix_exchange,
)
from tests.support.waiting import wait_for

NEW_MODEL = "acme-fine-tune"
BUNDLED = load_price_table()
SIM = UNLIMITED_SIM + f'models = ["gpt-4o-mini", "{NEW_MODEL}"]\n'


def prices(input_usd: float, output_usd: float) -> str:
    return (f'[openai."{NEW_MODEL}"]\nmax_output_tokens = 4096\n\n'
            f'[openai."{NEW_MODEL}".standard]\ninput = {input_usd}\noutput = {output_usd}\n')


def call(daemon: Daemon, model: str) -> tuple[float, Usage, str]:
    """One chat completion: its billed cost (USD), its usage and its ledger request id."""
    body = orjson.dumps({"model": model, "max_tokens": 8,
                         "messages": [{"role": "user", "content": "price me"}]})
    status, answer, headers = unix_exchange(daemon.socket_path, "POST", "/v1/chat/completions",
                                            body, {"content-type": "application/json"})
    assert status == 200, answer
    usage = Usage(answer["usage"]["prompt_tokens"], 0, answer["usage"]["completion_tokens"])
    return float(headers["x-llmspool-cost-usd"]), usage, headers["x-llmspool-request-id"]


def usd_at(input_usd: float, output_usd: float, usage: Usage) -> float:
    return usage.input_tokens * input_usd / 1e6 + usage.output_tokens * output_usd / 1e6


def bundled_usd(model: str, usage: Usage) -> float:
    price = BUNDLED.price("openai", model, Tier.STANDARD)
    assert price is not None
    return usd(price.cost(usage))


def test_a_price_file_adds_a_model_keeps_the_bundled_prices_and_reloads(tmp_path: Path) -> None:
    assert NEW_MODEL not in BUNDLED.models("openai")
    (tmp_path / "sim").mkdir()
    sim = start_sim(tmp_path / "sim", SIM)
    overlay = tmp_path / "my-prices.toml"
    overlay.write_text(prices(1.0, 4.0))
    # A relative path: relative to the config file, as the daemon runs from elsewhere.
    daemon = start_daemon(tmp_path, sim.url, config_toml='[pricing]\nfile = "my-prices.toml"\n',
                          process=True)
    try:
        cost, usage, before_id = call(daemon, NEW_MODEL)
        assert cost == pytest.approx(usd_at(1.0, 4.0, usage), rel=1e-9) and cost > 0
        cost, usage, _ = call(daemon, "gpt-4o-mini")
        assert cost == pytest.approx(bundled_usd("gpt-4o-mini", usage), rel=1e-9)

        overlay.write_text(prices(2.0, 8.0))
        seen = len(daemon.log())
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded the log level and the price book" in daemon.log()[seen:],
                 what="the reload in the log")

        cost, usage, after_id = call(daemon, NEW_MODEL)
        assert cost == pytest.approx(usd_at(2.0, 8.0, usage), rel=1e-9)
        cost, usage, _ = call(daemon, "gpt-4o-mini")
        assert cost == pytest.approx(bundled_usd("gpt-4o-mini", usage), rel=1e-9)
        status, ledger = daemon.get("/v1/ledger?limit=10")
        assert status == 200
        versions = {entry["request_id"]: entry["price_version"] for entry in ledger["entries"]}
        assert versions[before_id] != versions[after_id]
        assert daemon.terminate() == 0
    finally:
        daemon.terminate()
        sim.terminate()
