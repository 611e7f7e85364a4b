"""The ``[sim]`` config table: what the simulator serves, how fast, which faults it starts with,
how flex behaves (latency, *resource unavailable* spells), and, in its ``[sim.batch]`` sub-table,
how batches move and fail (``batch_config.BatchSettings``).

``SimConfig()`` is complete; ``SimConfig.from_table`` validates a TOML table (an unknown key or a
bad value raises ``ConfigError`` naming the dotted key, e.g. ``sim.faults[0].probability``,
``sim.flex_outages[0].duration`` or ``sim.batch.turnaround``) and ``to_table`` writes one back
that ``from_table`` reads to an equal config. Its durations are rehearsal time: ``speed``
divides them all where the simulator waits (``llmspool.sim.speed``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llmspool.core.errors import ConfigError
from llmspool.core.units import parse_duration
from llmspool.sim.batch_config import BatchSettings
from llmspool.sim.fault_values import duration_text
from llmspool.sim.faults import FaultRule, rules_from_list
from llmspool.sim.flex import FlexOutage, outages_from_list
from llmspool.sim.request_log import DEFAULT_SIZE as DEFAULT_REQUEST_LOG_SIZE
from llmspool.sim.request_log import MAX_SIZE as MAX_REQUEST_LOG_SIZE
from llmspool.sim.speed import DEFAULT_SPEED, speed_from

DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "o3",
    "o4-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
)
OLLAMA_MODELS: tuple[str, ...] = ("llama3.2", "nomic-embed-text")
"""The models served by default under ``flavor = "ollama"``."""
ANTHROPIC_MODELS: tuple[str, ...] = ("claude-haiku-4-5", "claude-sonnet-4-5", "claude-opus-4-5")
"""The models served by default under ``flavor = "anthropic"``."""
FLAVORS = ("openai", "ollama", "anthropic")

# Bounds that keep a typo from asking for gigabytes of fake text per answer.
MAX_OUTPUT_TOKENS = 1_000_000


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Settings of ``llmspool sim``; durations are in seconds of rehearsal time (``speed``)."""

    speed: float = DEFAULT_SPEED
    """How many times faster than real time rehearsal time runs: every duration here, in
    ``[sim.batch]`` and given at run time is divided by it (``llmspool.sim.speed``); e.g. 1440
    rehearses a day in a minute. ``llmspool sim --speed`` overrides it."""
    latency: float = 0.0
    """Fixed wait before every answer (before the first byte of a stream)."""
    latency_per_token: float = 0.0
    """Extra wait per output token; also the interval between streamed token chunks."""
    output_tokens: int = 16
    """Answer length when a request sets no max_tokens/max_completion_tokens/max_output_tokens."""
    models: tuple[str, ...] = DEFAULT_MODELS
    """Model ids served; others get 404 ``model_not_found``. ``from_table``'s default depends on
    ``flavor``: ``OLLAMA_MODELS`` for Ollama, ``ANTHROPIC_MODELS`` for Anthropic."""
    flavor: str = "openai"
    """The API impersonated: ``openai``, ``ollama`` (``llmspool.sim.ollama``) or ``anthropic``
    (``llmspool.sim.anthropic``: the Messages and Message Batches APIs)."""
    semantic_embeddings: bool = False
    """Give texts with words in common similar embeddings (cosine about the share of words in
    common), to test near-duplicate matching; ``False``: the same text gets the same vector,
    different texts unrelated ones (``llmspool.sim.vectors``)."""
    seed: int = 0
    """Seed of the RNG that decides which requests a probabilistic fault hits (and of the flex
    draws, the batch line draws and, with ``turnaround_p99``, each batch's turnaround)."""
    ratelimit_requests: int = 10_000
    """Requests per minute per model (``x-ratelimit-limit-requests``; see ``ratelimit``)."""
    ratelimit_tokens: int = 30_000_000
    """Tokens per minute per model (``x-ratelimit-limit-tokens``)."""
    enforce_ratelimits: bool = False
    """Refuse what does not fit the limits with 429 ``rate_limit_exceeded``, as OpenAI does;
    ``False``: the headers report the limits, nothing is refused."""
    pricing_file: str = ""
    """Price table deciding which models offer flex (a flex price); "" is the bundled one."""
    flex_latency: float = 0.0
    """Extra fixed wait before a flex answer, on top of ``latency``."""
    flex_latency_jitter: float = 0.0
    """Extra wait before a flex answer, uniform from 0 to this (seeded RNG)."""
    flex_latency_per_token: float | None = None
    """Per-token wait and stream pace of flex answers; ``None`` ("" in TOML): latency_per_token."""
    flex_unavailable_probability: float = 0.0
    """Chance that a flex request is refused with 429 ``resource_unavailable`` (seeded RNG)."""
    flex_outage_period: float = 0.0
    """Length of the repeating outage window (0: none), counted from the sim's start."""
    flex_outage_fraction: float = 0.0
    """Share of each ``flex_outage_period``, at its start, during which flex is unavailable."""
    request_log_size: int = DEFAULT_REQUEST_LOG_SIZE
    """Entries kept in the request log (``GET /_sim/requests``), the newest; 0 keeps none."""
    faults: tuple[FaultRule, ...] = field(default=())
    """Fault rules active from start (``[[sim.faults]]``)."""
    flex_outages: tuple[FlexOutage, ...] = field(default=())
    """Scheduled flex outages (``[[sim.flex_outages]]`` with ``start`` and ``duration``)."""
    batch: BatchSettings = field(default_factory=BatchSettings)
    """How simulated batches move and fail (``[sim.batch]``)."""

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> SimConfig:
        """Validate the ``[sim]`` table of a config file."""
        if not isinstance(table, Mapping):
            raise ConfigError("sim", "must be a table")
        known = list(cls.__dataclass_fields__)
        for key in table:
            if key not in known:
                raise ConfigError(f"sim.{key}", f"unknown key; known keys: {', '.join(known)}")
        defaults = cls()
        flavor = _choice(table, "flavor", defaults.flavor, FLAVORS)
        default_models = {"ollama": OLLAMA_MODELS, "anthropic": ANTHROPIC_MODELS}.get(
            flavor, defaults.models
        )
        period = _duration(table, "flex_outage_period", defaults.flex_outage_period)
        fraction = _fraction(table, "flex_outage_fraction", defaults.flex_outage_fraction)
        if fraction > 0 and period <= 0:
            raise ConfigError(
                "sim.flex_outage_period", "must be more than 0s when flex_outage_fraction is set"
            )
        return cls(
            speed=speed_from(table.get("speed", defaults.speed), "sim.speed"),
            latency=_duration(table, "latency", defaults.latency),
            latency_per_token=_duration(table, "latency_per_token", defaults.latency_per_token),
            output_tokens=_int(
                table, "output_tokens", defaults.output_tokens, 1, MAX_OUTPUT_TOKENS
            ),
            models=_models(table.get("models", default_models)),
            flavor=flavor,
            semantic_embeddings=_bool(table, "semantic_embeddings", defaults.semantic_embeddings),
            seed=_int(table, "seed", defaults.seed, None, None),
            ratelimit_requests=_int(
                table, "ratelimit_requests", defaults.ratelimit_requests, 1, None
            ),
            ratelimit_tokens=_int(table, "ratelimit_tokens", defaults.ratelimit_tokens, 1, None),
            enforce_ratelimits=_bool(table, "enforce_ratelimits", defaults.enforce_ratelimits),
            pricing_file=_text(table, "pricing_file", defaults.pricing_file),
            flex_latency=_duration(table, "flex_latency", defaults.flex_latency),
            flex_latency_jitter=_duration(
                table, "flex_latency_jitter", defaults.flex_latency_jitter
            ),
            flex_latency_per_token=_optional_duration(table, "flex_latency_per_token"),
            flex_unavailable_probability=_fraction(
                table, "flex_unavailable_probability", defaults.flex_unavailable_probability
            ),
            flex_outage_period=period,
            flex_outage_fraction=fraction,
            request_log_size=_int(
                table,
                "request_log_size",
                defaults.request_log_size,
                0,
                MAX_REQUEST_LOG_SIZE,
            ),
            faults=tuple(rules_from_list(table.get("faults", []), "sim.faults")),
            flex_outages=outages_from_list(table.get("flex_outages", []), "sim.flex_outages"),
            batch=BatchSettings.from_table(table.get("batch", {}), "sim.batch"),
        )

    def to_table(self) -> dict[str, Any]:
        """The ``[sim]`` table for this config, ready for ``tomli_w``."""
        return {
            "speed": self.speed,
            "latency": duration_text(self.latency),
            "latency_per_token": duration_text(self.latency_per_token),
            "output_tokens": self.output_tokens,
            "models": list(self.models),
            "flavor": self.flavor,
            "semantic_embeddings": self.semantic_embeddings,
            "seed": self.seed,
            "ratelimit_requests": self.ratelimit_requests,
            "ratelimit_tokens": self.ratelimit_tokens,
            "enforce_ratelimits": self.enforce_ratelimits,
            "pricing_file": self.pricing_file,
            "flex_latency": duration_text(self.flex_latency),
            "flex_latency_jitter": duration_text(self.flex_latency_jitter),
            "flex_latency_per_token": (
                ""
                if self.flex_latency_per_token is None
                else duration_text(self.flex_latency_per_token)
            ),
            "flex_unavailable_probability": self.flex_unavailable_probability,
            "flex_outage_period": duration_text(self.flex_outage_period),
            "flex_outage_fraction": self.flex_outage_fraction,
            "request_log_size": self.request_log_size,
            "faults": [rule.to_mapping() for rule in self.faults],
            "flex_outages": [outage.to_mapping() for outage in self.flex_outages],
            "batch": self.batch.to_table(),
        }


def _duration(table: Mapping[str, Any], name: str, default: float) -> float:
    if name not in table:
        return default
    try:
        return parse_duration(table[name])
    except ValueError as exc:
        raise ConfigError(f"sim.{name}", str(exc)) from exc


def _optional_duration(table: Mapping[str, Any], name: str) -> float | None:
    """A duration where "" (or leaving the key out) means unset."""
    if table.get(name, "") == "":
        return None
    return _duration(table, name, 0.0)


def _fraction(table: Mapping[str, Any], name: str, default: float) -> float:
    value = table.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(f"sim.{name}", f"must be a number from 0 to 1, not {value!r}")
    return float(value)


def _bool(table: Mapping[str, Any], name: str, default: bool) -> bool:
    value = table.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"sim.{name}", f"must be true or false, not {value!r}")
    return value


def _text(table: Mapping[str, Any], name: str, default: str) -> str:
    value = table.get(name, default)
    if not isinstance(value, str):
        raise ConfigError(f"sim.{name}", f"must be a string, not {value!r}")
    return value


def _choice(table: Mapping[str, Any], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _text(table, name, default)
    if value not in choices:
        raise ConfigError(f"sim.{name}", f"must be one of {', '.join(choices)}, not {value!r}")
    return value


def _int(
    table: Mapping[str, Any], name: str, default: int, minimum: int | None, maximum: int | None
) -> int:
    value = table.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"sim.{name}", f"must be a whole number, not {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"sim.{name}", f"must be at least {minimum}, not {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"sim.{name}", f"must be at most {maximum}, not {value}")
    return value


def _models(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
        raise ConfigError("sim.models", "must be a non-empty list of model ids")
    seen: set[str] = set()
    for index, model in enumerate(value):
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"sim.models[{index}]", f"must be a model id, not {model!r}")
        if model in seen:
            raise ConfigError(f"sim.models[{index}]", f"{model!r} is listed twice")
        seen.add(model)
    return tuple(value)
