"""The ``[sim]`` config table: defaults, validation naming the key, round trip, the fragment."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from llmspool.core.errors import ConfigError
from llmspool.sim.config import DEFAULT_MODELS, SimConfig
from llmspool.sim.faults import FaultKind, FaultRule
from llmspool.sim.flex import FlexOutage

ETC = Path(__file__).resolve().parents[2] / "etc"


def sim_section() -> str:
    """The documented ``[sim]`` section: the fragment, or its copy folded into llmspool.toml."""
    fragment = ETC / "llmspool.sim.toml.fragment"
    if fragment.exists():
        return fragment.read_text()
    lines = (ETC / "llmspool.toml").read_text().splitlines()
    start = lines.index("[sim]")
    end = next(
        (
            i
            for i in range(start + 1, len(lines))
            if lines[i].startswith("[") and not lines[i].startswith(("[sim.", "[[sim."))
        ),
        len(lines),
    )
    return "\n".join(lines[start:end]) + "\n"


def test_defaults_are_complete() -> None:
    config = SimConfig()
    assert config.latency == 0
    assert config.latency_per_token == 0
    assert config.output_tokens == 16
    assert config.models == DEFAULT_MODELS
    assert "gpt-5-nano" in config.models
    assert "text-embedding-3-large" in config.models
    assert config.faults == ()
    assert config.pricing_file == ""
    assert config.flex_latency == config.flex_latency_jitter == 0
    assert config.flex_latency_per_token is None
    assert config.flex_unavailable_probability == 0
    assert config.flex_outage_period == config.flex_outage_fraction == 0
    assert config.flex_outages == ()
    assert config.semantic_embeddings is False
    assert SimConfig.from_table({}) == config


def test_values_are_read() -> None:
    config = SimConfig.from_table(
        {
            "latency": "250ms",
            "latency_per_token": "20ms",
            "output_tokens": 64,
            "models": ["gpt-4o", "my-model"],
            "seed": 42,
            "ratelimit_requests": 500,
            "ratelimit_tokens": 200_000,
            "enforce_ratelimits": True,
            "semantic_embeddings": True,
            "faults": [
                {"kind": "status", "status": 503, "probability": 0.1},
                {"kind": "slow", "delay": "2s", "model": "gpt-4o", "count": 3},
            ],
        }
    )
    assert config.latency == 0.25
    assert config.latency_per_token == 0.02
    assert config.output_tokens == 64
    assert config.models == ("gpt-4o", "my-model")
    assert config.seed == 42
    assert config.ratelimit_requests == 500
    assert config.ratelimit_tokens == 200_000
    assert config.enforce_ratelimits is True
    assert config.semantic_embeddings is True
    assert config.faults == (
        FaultRule(kind=FaultKind.STATUS, status=503, probability=0.1),
        FaultRule(kind=FaultKind.SLOW, delay=2.0, model="gpt-4o", count=3),
    )


def test_flex_values_are_read() -> None:
    config = SimConfig.from_table(
        {
            "pricing_file": "/tmp/prices.toml",
            "flex_latency": "2s",
            "flex_latency_jitter": "500ms",
            "flex_latency_per_token": "0s",
            "flex_unavailable_probability": 0.25,
            "flex_outage_period": "10s",
            "flex_outage_fraction": 0.3,
            "flex_outages": [
                {"start": "10s", "duration": "30s"},
                {"start": 0, "duration": "1m"},
            ],
        }
    )
    assert config.pricing_file == "/tmp/prices.toml"
    assert config.flex_latency == 2.0
    assert config.flex_latency_jitter == 0.5
    # "0s" is a per-token latency of zero, not "unset".
    assert config.flex_latency_per_token == 0.0
    assert config.flex_unavailable_probability == 0.25
    assert config.flex_outage_period == 10.0
    assert config.flex_outage_fraction == 0.3
    assert config.flex_outages == (FlexOutage(10.0, 30.0), FlexOutage(0.0, 60.0))
    assert SimConfig.from_table({"flex_latency_per_token": ""}).flex_latency_per_token is None
    single = SimConfig.from_table({"flex_outages": {"start": "1s", "duration": "2s"}})
    assert single.flex_outages == (FlexOutage(1.0, 2.0),)


def test_a_single_fault_table_is_one_rule() -> None:
    config = SimConfig.from_table({"faults": {"kind": "drop", "count": 1}})
    assert config.faults == (FaultRule(kind=FaultKind.DROP, count=1),)
    with pytest.raises(ConfigError) as caught:
        SimConfig.from_table({"faults": {"kind": "drop", "probability": -1}})
    assert caught.value.key == "sim.faults.probability"


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"latency": "fast"}, "sim.latency"),
        ({"latency": -1}, "sim.latency"),
        ({"latency_per_token": "5 parsecs"}, "sim.latency_per_token"),
        ({"output_tokens": 0}, "sim.output_tokens"),
        ({"output_tokens": "16"}, "sim.output_tokens"),
        ({"models": []}, "sim.models"),
        ({"models": "gpt-4o"}, "sim.models"),
        ({"models": ["gpt-4o", "gpt-4o"]}, "sim.models[1]"),
        ({"models": ["gpt-4o", 4]}, "sim.models[1]"),
        ({"seed": 1.5}, "sim.seed"),
        ({"ratelimit_requests": 0}, "sim.ratelimit_requests"),
        ({"ratelimit_tokens": True}, "sim.ratelimit_tokens"),
        ({"enforce_ratelimits": "yes"}, "sim.enforce_ratelimits"),
        ({"semantic_embeddings": 1}, "sim.semantic_embeddings"),
        ({"latncy": "1s"}, "sim.latncy"),
        ({"faults": "none"}, "sim.faults"),
        ({"faults": [{"kind": "status", "probability": 1.5}]}, "sim.faults[0].probability"),
        ({"faults": [{"kind": "drop"}, {"kind": "nope"}]}, "sim.faults[1].kind"),
        ({"faults": [{"kind": "slow", "status": 500}]}, "sim.faults[0].status"),
        ({"faults": [{"kind": "hang", "delay": "forever"}]}, "sim.faults[0].delay"),
        ({"faults": [{"kind": "stream_cut", "after_chunks": -1}]}, "sim.faults[0].after_chunks"),
        ({"faults": [{"kind": "status", "path": ""}]}, "sim.faults[0].path"),
        ({"pricing_file": 3}, "sim.pricing_file"),
        ({"flex_latency": "slow"}, "sim.flex_latency"),
        ({"flex_latency_jitter": -0.5}, "sim.flex_latency_jitter"),
        ({"flex_latency_per_token": "often"}, "sim.flex_latency_per_token"),
        ({"flex_latency_per_token": False}, "sim.flex_latency_per_token"),
        ({"flex_unavailable_probability": 1.5}, "sim.flex_unavailable_probability"),
        ({"flex_unavailable_probability": "0.1"}, "sim.flex_unavailable_probability"),
        ({"flex_unavailable_probability": True}, "sim.flex_unavailable_probability"),
        ({"flex_outage_period": "weekly"}, "sim.flex_outage_period"),
        ({"flex_outage_fraction": -0.1}, "sim.flex_outage_fraction"),
        ({"flex_outage_fraction": 0.3}, "sim.flex_outage_period"),
        ({"flex_outages": "sometimes"}, "sim.flex_outages"),
        ({"flex_outages": ["10s"]}, "sim.flex_outages[0]"),
        ({"flex_outages": [{"start": "1s"}]}, "sim.flex_outages[0].duration"),
        ({"flex_outages": [{"duration": "1s"}]}, "sim.flex_outages[0].start"),
        (
            {
                "flex_outages": [
                    {"start": "1s", "duration": "1s"},
                    {"start": "1s", "duration": "0s"},
                ]
            },
            "sim.flex_outages[1].duration",
        ),
        ({"flex_outages": [{"start": "-1s", "duration": "1s"}]}, "sim.flex_outages[0].start"),
        ({"flex_outages": [{"start": "1s", "duration": "x"}]}, "sim.flex_outages[0].duration"),
        (
            {"flex_outages": [{"start": "1s", "duration": "1s", "end": "2s"}]},
            "sim.flex_outages[0].end",
        ),
    ],
)
def test_bad_values_name_their_key(table: dict[str, Any], key: str) -> None:
    assert_refused(table, key)


def assert_refused(table: dict[str, Any], key: str) -> None:
    """``SimConfig.from_table(table)`` raises a ``ConfigError`` naming ``key``."""
    with pytest.raises(ConfigError) as caught:
        SimConfig.from_table(table)
    assert caught.value.key == key
    assert key in str(caught.value)


def test_to_table_round_trips_through_toml() -> None:
    config = SimConfig.from_table(
        {
            "latency": "1.5s",
            "latency_per_token": "12.5ms",
            "output_tokens": 7,
            "models": ["gpt-4o"],
            "seed": -3,
            "semantic_embeddings": True,
            "faults": [
                {"kind": "rate_limit", "retry_after": "1m30s", "count": 2, "tier": "flex"},
                {"kind": "stream_cut", "after_chunks": 4, "path": "/v1/responses"},
                {"kind": "hang"},
                {"kind": "quota", "message": "no money", "code": "billing_hard_limit_reached"},
            ],
            "pricing_file": "prices.toml",
            "flex_latency": "1m",
            "flex_latency_jitter": "2.5s",
            "flex_latency_per_token": "30ms",
            "flex_unavailable_probability": 0.05,
            "flex_outage_period": "1s",
            "flex_outage_fraction": 0.5,
            "flex_outages": [
                {"start": "10s", "duration": "30s"},
                {"start": "0s", "duration": "1h"},
            ],
        }
    )
    assert config.flex_outages and config.flex_latency_per_token == 0.03
    text = tomli_w.dumps({"sim": config.to_table()})
    assert SimConfig.from_table(tomllib.loads(text)["sim"]) == config
    unset = SimConfig.from_table({"flex_latency_per_token": "", "latency_per_token": "5ms"})
    assert unset.to_table()["flex_latency_per_token"] == ""
    text = tomli_w.dumps({"sim": unset.to_table()})
    assert SimConfig.from_table(tomllib.loads(text)["sim"]) == unset
    assert SimConfig.from_table(SimConfig().to_table()) == SimConfig()


def test_fragment_documents_every_key_with_its_default() -> None:
    text = sim_section()
    assert SimConfig.from_table(tomllib.loads(text)["sim"]) == SimConfig()
    lines = text.splitlines()
    for key in SimConfig.__dataclass_fields__:
        if key in ("faults", "flex_outages", "batch"):  # batch: a [sim.batch] table
            continue
        assignments = [i for i, line in enumerate(lines) if line.startswith(f"{key} =")]
        assert assignments, f"{key} missing from the fragment"
        assert lines[assignments[0] - 1].startswith("# "), f"{key} has no comment above it"
    for rule_key in ("kind", "probability", "count", "path", "model", "tier", "status",
                     "retry_after", "delay", "after_chunks", "code", "message",
                     "method", "contains"):  # fmt: skip
        assert f"#   {rule_key} " in text, f"fault rule key {rule_key} is not documented"
    # The commented example must be valid once uncommented.
    example = lines[lines.index("# Example:") + 1 :]
    example = example[
        : next((i for i, line in enumerate(example) if not line.startswith("#")), None)
    ]
    uncommented = "\n".join(line.removeprefix("#").strip() for line in example)
    rules = SimConfig.from_table(tomllib.loads("[sim]\n" + uncommented)["sim"]).faults
    assert [rule.kind for rule in rules] == [
        FaultKind.STATUS,
        FaultKind.RATE_LIMIT,
        FaultKind.REFUSAL,
    ]
    assert rules[2].contains == "HARD:"
    for outage_key in ("start", "duration"):
        assert f"#   {outage_key} " in text, f"flex outage key {outage_key} is not documented"
    example = lines[lines.index("# [[sim.flex_outages]]") :]
    example = example[
        : next((i for i, line in enumerate(example) if not line.startswith("#")), None)
    ]
    uncommented = "\n".join(line.removeprefix("#").strip() for line in example)
    outages = SimConfig.from_table(tomllib.loads("[sim]\n" + uncommented)["sim"]).flex_outages
    assert outages == (FlexOutage(10.0, 30.0),)
