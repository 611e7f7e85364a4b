"""The daemon's configuration: its shape, its defaults, and how a TOML file becomes one.

Every section is a frozen dataclass whose fields carry their defaults, so ``Config()`` is a
complete configuration and the daemon runs with no file at all. ``load_config`` reads TOML,
refuses unknown keys and bad values with the dotted key in the message, then applies
environment overrides:

- ``LLMSPOOL_SOCKET``, ``LLMSPOOL_STATE_DIR``: the socket path and the state directory;
- ``OPENAI_BASE_URL``: ``providers.openai.base_url``;
- ``LLMSPOOL_<SECTION>__<KEY>`` for any key, e.g. ``LLMSPOOL_DAEMON__MAX_BODY_SIZE=64MiB`` or
  ``LLMSPOOL_PROVIDERS__OPENAI__TIMEOUT=15m`` (double underscores separate the levels, because
  keys themselves contain single ones). Values are read as TOML when they parse as such
  (``true``, ``12``, ``["a"]``) and as plain strings otherwise.

``config_to_table`` turns a config back into the TOML-ready table ``llmspool config init``
writes with tomli-w.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from llmspool.errors import ConfigError
from llmspool.sim.config import SimConfig
from llmspool.units import format_duration, format_size, parse_duration, parse_size

ENV_PREFIX = "LLMSPOOL_"
LOG_LEVELS = ("debug", "info", "warning", "error")
TRACING_MODES = ("auto", "on", "off")
SHORT_DEADLINE = ("refuse", "best_effort")


def _duration(default: str) -> Any:
    return field(default=parse_duration(default), metadata={"kind": "duration"})


def _size(default: str) -> Any:
    return field(default=parse_size(default), metadata={"kind": "size"})


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """``[daemon]``: where the daemon listens and keeps its state, and how it behaves."""

    socket: str = "/run/llmspool/llmspool.sock"
    socket_mode: int = field(default=0o660, metadata={"kind": "mode"})
    state_dir: str = "/var/lib/llmspool"
    max_body_size: int = _size("32MiB")
    shutdown_grace: float = _duration("30s")
    max_in_flight: int = 4096
    log_level: str = field(default="info", metadata={"choices": LOG_LEVELS})
    # Users and groups who see and manage every user's jobs and costs (root always does).
    admins: tuple[str, ...] = ()
    # What one connection may hold (server/uvicorn_server.py): a request's head must arrive
    # within header_timeout; an idle keep-alive connection closes after keepalive_timeout;
    # heads are bounded in headers and bytes (431 beyond); past max_connections, 503.
    header_timeout: float = _duration("10s")
    keepalive_timeout: float = _duration("30s")
    max_headers: int = 100
    max_header_size: int = _size("64KiB")
    max_connections: int = 4096


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """``[providers.NAME]``: one upstream API, served by the plugin named ``plugin``."""

    plugin: str = "openai"
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    api_key_credential: str = "openai_api_key"
    models: tuple[str, ...] = ()
    timeout: float = _duration("10m")
    connect_timeout: float = _duration("5s")
    stream_idle_timeout: float = _duration("5m")
    max_connections: int = 256
    keepalive_timeout: float = _duration("60s")


@dataclass(frozen=True, slots=True)
class PricingConfig:
    """``[pricing]``: where prices per model and tier come from."""

    file: str = ""


TIER_CHOICES = ("auto", "standard", "flex", "batch")
# auto: deterministic requests only (embeddings, temperature 0, a seed); on: every request;
# off: never. The request header x-llmspool-cache: on|off overrides it.
CACHE_MODES = ("auto", "on", "off")


@dataclass(frozen=True, slots=True)
class FlexConfig:
    """``[flex]``: OpenAI Flex processing, half price when capacity allows."""

    enabled: bool = True
    timeout: float = _duration("15m")
    max_retries: int = 3
    # Deferred work (jobs) is retried on flex while its deadline leaves room for a standard
    # call after it; a count is only an extra bound if set.
    deferred_max_retries: int | None = None
    fallback_to_standard: bool = True
    backoff_min: float = _duration("1s")
    backoff_max: float = _duration("60s")


@dataclass(frozen=True, slots=True)
class PlannerConfig:
    """``[planner]``: how the tier is chosen from a deadline."""

    margin: float = 1.5
    safety: float = _duration("30s")
    default_standard_latency: float = _duration("30s")
    default_flex_latency: float = _duration("5m")
    default_batch_latency: float = _duration("150s")
    # Pay for the priority tier when a deadline is shorter than a standard call's expected
    # time and the model has a priority price; off, such calls go standard and may be late.
    allow_priority: bool = False


@dataclass(frozen=True, slots=True)
class JobsConfig:
    """``[jobs]``: deferred work handed over with a deadline."""

    default_deadline: float = _duration("24h")
    max_upload_size: int = _size("512MiB")
    max_line_size: int = _size("4MiB")
    max_queued: int = 2_000_000
    max_in_flight: int = 64
    max_attempts: int = 3
    retention: float = _duration("7d")
    # A job whose deadline is shorter than any tier's expected time: refused (400
    # deadline_too_short), or accepted and run as soon as possible (best_effort).
    on_short_deadline: str = field(default="refuse", metadata={"choices": SHORT_DEADLINE})


@dataclass(frozen=True, slots=True)
class FilesConfig:
    """``[files]``: OpenAI's Files and Batches API on the socket (``/v1/files``,
    ``/v1/batches``), served by jobs."""

    max_size: int = _size("200MB")
    retention: float = _duration("30d")


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """``[batch]``: OpenAI's Batch API, half price for work that can wait hours."""

    enabled: bool = True
    max_lines: int = 50_000
    max_bytes: int = _size("200MB")
    max_age: float = _duration("5m")
    poll_min: float = _duration("10s")
    poll_max: float = _duration("5m")
    cancel_wait: float = _duration("10m")
    # A batch still open this long after it was submitted is a straggler (batch turnaround
    # has a long tail): cancelled, and its unfinished lines put in a new batch while one still
    # fits before their deadlines. 0s: never.
    rebatch_after: float = _duration("1h")
    max_attempts: int = 3
    max_enqueued_tokens: int = 0
    delete_files: bool = True


@dataclass(frozen=True, slots=True)
class OperationConfig:
    """``[operations.NAME]``: what differs for work tagged with this operation.

    A key left out inherits: ``deadline`` from ``[jobs] default_deadline``, ``flex`` from
    ``[flex] enabled``, ``batch`` from ``[batch] enabled``, ``fallback_to_standard`` and
    ``max_retries`` from ``[flex]``. ``cache`` (auto, on, off) says which of its requests are
    answered from the cache and share calls in flight, ``cache_ttl`` how long its answers are
    kept (``[cache] ttl`` when left out), ``cache_shared`` lets every calling user share its
    answers (otherwise each user has a cache of their own), and ``similar`` turns on
    near-duplicate matching by embedding similarity for it.
    """

    deadline: float | None = field(default=None, metadata={"kind": "duration"})
    tier: str = field(default="auto", metadata={"choices": TIER_CHOICES})
    flex: bool | None = None
    batch: bool | None = None
    fallback_to_standard: bool | None = None
    max_retries: int | None = None
    cache: str = field(default="auto", metadata={"choices": CACHE_MODES})
    cache_ttl: float | None = field(default=None, metadata={"kind": "duration"})
    cache_shared: bool = False
    similar: bool = False


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """``[cache]``: answers kept to serve identical requests again at no cost, and identical
    requests in flight sharing one upstream call."""

    enabled: bool = True
    ttl: float = _duration("1h")
    max_entries: int = 100_000
    max_entry_size: int = _size("1MiB")
    similar_model: str = "text-embedding-3-small"
    similar_cache_threshold: float = 0.85
    similar_dedup_threshold: float = 0.95


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """``[retry]`` (and ``[retry.providers.NAME]``, which overrides it key by key): how calls
    that failed for a passing reason are sent again."""

    max_attempts: int = 3
    backoff_min: float = _duration("1s")
    backoff_max: float = _duration("60s")
    budget_fraction: float = 0.1
    budget_window: float = _duration("60s")
    budget_min_retries: int = 10


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """``[breaker]``: when a (provider, tier) is taken out of service, and for how long."""

    failures: int = 5
    cooldown: float = _duration("60s")
    failure_rate: float = 0.5
    window: float = _duration("60s")
    min_calls: int = 20


@dataclass(frozen=True, slots=True)
class FailoverConfig:
    """``[failover]``: where calls go while a provider's breaker is open.

    ``providers`` maps a provider to its stand-in (``openai = "ollama"``); ``models`` maps a
    model to the stand-in's model (``[failover.models] "gpt-4o-mini" = "llama3.2"``); a model
    not listed keeps its name.
    """

    providers: Mapping[str, str] = field(default_factory=dict)
    models: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LimitConfig:
    """``[limits.PROVIDER."MODEL"]``: the upstream's rate limits for one model (0: unknown,
    learned from the ``x-ratelimit-*`` headers), and a cap on calls in flight (0: none)."""

    rpm: int = 0
    tpm: int = 0
    concurrency: int = 0


UNKNOWN_MODEL_POLICIES = ("refuse", "ceiling")
RESERVE_POLICIES = ("max", "estimate")


@dataclass(frozen=True, slots=True)
class CapConfig:
    """``[budgets.operations.NAME]``, ``[budgets.users.NAME]``, ``[budgets.providers.NAME]``."""

    daily_usd: float | None = None
    per_request_usd: float | None = None


@dataclass(frozen=True, slots=True)
class BudgetsConfig:
    """``[budgets]``: hard caps on spend; a call that would break one is refused before it
    is sent. A cap left out is no cap."""

    per_request_usd: float | None = None
    daily_usd: float | None = None
    session_usd: float | None = None
    warn_fraction: float = 0.8
    unknown_model: str = field(default="refuse", metadata={"choices": UNKNOWN_MODEL_POLICIES})
    unknown_model_ceiling_usd: float = 0.10
    # What a call that sets no output limit reserves: the model's maximum output ("max", so a
    # cap cannot be overshot), or the typical answer's length ("estimate", may overshoot).
    reserve: str = field(default="max", metadata={"choices": RESERVE_POLICIES})
    # The maximum output reserved for a model pricing.toml gives no max_output_tokens.
    unknown_max_output_tokens: int = 32768
    operations: Mapping[str, CapConfig] = field(default_factory=dict)
    users: Mapping[str, CapConfig] = field(default_factory=dict)
    providers: Mapping[str, CapConfig] = field(default_factory=dict)

    @property
    def has_caps(self) -> bool:
        """Whether any cap is set (if none, calls need no reservation round trip)."""
        scoped = [*self.operations.values(), *self.users.values(), *self.providers.values()]
        return any(
            value is not None
            for value in (self.per_request_usd, self.daily_usd, self.session_usd,
                          *(c.daily_usd for c in scoped), *(c.per_request_usd for c in scoped))
        )


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """``[tracing]``: OpenTelemetry spans, exported over OTLP/HTTP per the ``OTEL_*`` variables."""

    enabled: str = field(default="auto", metadata={"choices": TRACING_MODES})
    service_name: str = "llmspool"


def _default_providers() -> dict[str, ProviderConfig]:
    return {"openai": ProviderConfig()}


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration; ``Config()`` is the complete default."""

    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    providers: Mapping[str, ProviderConfig] = field(default_factory=_default_providers)
    pricing: PricingConfig = field(default_factory=PricingConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    flex: FlexConfig = field(default_factory=FlexConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    files: FilesConfig = field(default_factory=FilesConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    operations: Mapping[str, OperationConfig] = field(default_factory=dict)
    budgets: BudgetsConfig = field(default_factory=BudgetsConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    retry_providers: Mapping[str, RetryConfig] = field(default_factory=dict)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    failover: FailoverConfig = field(default_factory=FailoverConfig)
    limits: Mapping[str, Mapping[str, LimitConfig]] = field(default_factory=dict)
    sim: SimConfig = field(default_factory=SimConfig)

    def retry_for(self, provider: str) -> RetryConfig:
        """The retry settings of ``provider``: ``[retry]`` with its own overrides."""
        return self.retry_providers.get(provider, self.retry)

    @property
    def state_path(self) -> Path:
        return Path(self.daemon.state_dir)


_Section = TypeVar("_Section")


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read the config file (or ``$LLMSPOOL_CONFIG``, or nothing) and apply the environment.

    Raises ``ConfigError`` naming the key for anything wrong, and for a file that was asked for
    but does not exist.
    """
    env = os.environ if environ is None else environ
    chosen = path if path is not None else env.get("LLMSPOOL_CONFIG") or None
    table: dict[str, Any] = {}
    if chosen is not None:
        file_path = Path(chosen)
        try:
            with file_path.open("rb") as handle:
                table = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(
                "config", f"{file_path} does not exist (write one with `llmspool config init`)"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", f"{file_path} is not valid TOML: {exc}") from exc
        except OSError as exc:  # unreadable: permissions (the service user), a directory...
            raise ConfigError(
                "config", f"cannot read {file_path}: {exc.strerror or exc}; the user running "
                "the daemon needs read access to it (e.g. chgrp llmspool and chmod 0640 it, "
                "and 0750 on its directory)") from None
    _apply_env_overrides(table, env)
    return config_from_table(table)


def config_from_table(table: Mapping[str, Any]) -> Config:
    """Validate a parsed TOML table into a ``Config``."""
    _refuse_unknown(table, {f.name for f in dataclasses.fields(Config)} - {"retry_providers"}, "")
    providers_table = table.get("providers", {})
    if not isinstance(providers_table, Mapping):
        raise ConfigError("providers", "must be a table of [providers.NAME] tables")
    providers = {
        name: _section(ProviderConfig, _table_at(providers_table, name, f"providers.{name}"),
                       f"providers.{name}", defaults=_provider_defaults(name))
        for name in providers_table
    } or _default_providers()
    sim_table = _table_at(table, "sim", "sim")
    operations_table = _table_at(table, "operations", "operations")
    operations = {
        name: _section(OperationConfig, _table_at(operations_table, name, f"operations.{name}"),
                       f"operations.{name}")
        for name in operations_table
    }
    return Config(
        daemon=_section(DaemonConfig, _table_at(table, "daemon", "daemon"), "daemon"),
        providers=providers,
        pricing=_section(PricingConfig, _table_at(table, "pricing", "pricing"), "pricing"),
        tracing=_section(TracingConfig, _table_at(table, "tracing", "tracing"), "tracing"),
        flex=_section(FlexConfig, _table_at(table, "flex", "flex"), "flex"),
        planner=_section(PlannerConfig, _table_at(table, "planner", "planner"), "planner"),
        jobs=_section(JobsConfig, _table_at(table, "jobs", "jobs"), "jobs"),
        files=_section(FilesConfig, _table_at(table, "files", "files"), "files"),
        batch=_section(BatchConfig, _table_at(table, "batch", "batch"), "batch"),
        operations=operations,
        budgets=_budgets(_table_at(table, "budgets", "budgets")),
        cache=_cache(_table_at(table, "cache", "cache")),
        **_resilience(table, providers),
        sim=SimConfig.from_table(sim_table),
    )


def config_to_table(config: Config) -> dict[str, Any]:
    """The TOML-ready table of ``config`` (durations and sizes spelled as an operator would)."""
    return {
        "daemon": _section_to_table(config.daemon),
        "providers": {name: _section_to_table(p) for name, p in config.providers.items()},
        "pricing": _section_to_table(config.pricing),
        "tracing": _section_to_table(config.tracing),
        "flex": _section_to_table(config.flex),
        "planner": _section_to_table(config.planner),
        "jobs": _section_to_table(config.jobs),
        "files": _section_to_table(config.files),
        "batch": _section_to_table(config.batch),
        "operations": {name: _section_to_table(o) for name, o in config.operations.items()},
        "budgets": _budgets_to_table(config.budgets),
        "cache": _section_to_table(config.cache),
        "retry": {**_section_to_table(config.retry),
                  "providers": {name: _section_to_table(r)
                                for name, r in config.retry_providers.items()}},
        "breaker": _section_to_table(config.breaker),
        "failover": {**config.failover.providers, "models": dict(config.failover.models)},
        "limits": {provider: {model: _section_to_table(limit) for model, limit in models.items()}
                   for provider, models in config.limits.items()},
        "sim": config.sim.to_table(),
    }


def _resilience(table: Mapping[str, Any], providers: Mapping[str, ProviderConfig]) -> Any:
    """``[retry]``, ``[breaker]``, ``[failover]`` and ``[limits]``, checked against the
    configured providers (a failover or a limit naming an unknown provider is a typo)."""
    retry_table = dict(_table_at(table, "retry", "retry"))
    retry_providers_table = _table_at(retry_table, "providers", "retry.providers")
    retry_table.pop("providers", None)
    retry = _section(RetryConfig, retry_table, "retry")
    retry_providers = {}
    for name in retry_providers_table:
        _known_provider(name, providers, f"retry.providers.{name}")
        retry_providers[name] = _section(
            RetryConfig, _table_at(retry_providers_table, name, f"retry.providers.{name}"),
            f"retry.providers.{name}", defaults=retry,
        )
    for dotted, settings in [("retry", retry), *((f"retry.providers.{n}", r)
                                                 for n, r in retry_providers.items())]:
        if settings.max_attempts < 1:
            raise ConfigError(f"{dotted}.max_attempts", "must be at least 1 (1: never retry)")
        if settings.budget_fraction > 1:
            raise ConfigError(f"{dotted}.budget_fraction", "must be at most 1")
        if settings.backoff_max < settings.backoff_min:
            raise ConfigError(f"{dotted}.backoff_max", "must not be less than backoff_min")
    breaker = _section(BreakerConfig, _table_at(table, "breaker", "breaker"), "breaker")
    if breaker.failures < 1:
        raise ConfigError("breaker.failures", "must be at least 1")
    if not 0 < breaker.failure_rate <= 1:
        raise ConfigError("breaker.failure_rate", "must be more than 0 and at most 1")
    return {
        "retry": retry,
        "retry_providers": retry_providers,
        "breaker": breaker,
        "failover": _failover(_table_at(table, "failover", "failover"), providers),
        "limits": _limits(_table_at(table, "limits", "limits"), providers),
    }


def _cache(table: Mapping[str, Any]) -> CacheConfig:
    cache = _section(CacheConfig, table, "cache")
    for name in ("similar_cache_threshold", "similar_dedup_threshold"):
        value = getattr(cache, name)
        if not 0.0 < value <= 1.0:
            raise ConfigError(f"cache.{name}", f"expected a cosine similarity in (0, 1], got "
                                               f"{value}")
    return cache


def _failover(table: Mapping[str, Any], providers: Mapping[str, ProviderConfig]) -> FailoverConfig:
    models_table = _table_at(table, "models", "failover.models")
    stand_ins: dict[str, str] = {}
    for name, value in table.items():
        if name == "models":
            continue
        dotted = f"failover.{name}"
        _known_provider(name, providers, dotted)
        if not isinstance(value, str):
            raise ConfigError(dotted, f"expected the name of a provider, got {value!r}")
        _known_provider(value, providers, dotted)
        if value == name:
            raise ConfigError(dotted, "a provider cannot fail over to itself")
        stand_ins[name] = value
    models: dict[str, str] = {}
    for model, value in models_table.items():
        if not isinstance(value, str) or not value:
            raise ConfigError(f"failover.models.{model}", f"expected a model name, got {value!r}")
        models[model] = value
    return FailoverConfig(stand_ins, models)


def _limits(table: Mapping[str, Any],
            providers: Mapping[str, ProviderConfig]) -> dict[str, dict[str, LimitConfig]]:
    limits: dict[str, dict[str, LimitConfig]] = {}
    for provider in table:
        _known_provider(provider, providers, f"limits.{provider}")
        models = _table_at(table, provider, f"limits.{provider}")
        limits[provider] = {
            model: _section(LimitConfig, _table_at(models, model, f"limits.{provider}.{model}"),
                            f'limits.{provider}."{model}"')
            for model in models
        }
    return limits


def _known_provider(name: str, providers: Mapping[str, ProviderConfig], dotted: str) -> None:
    if name not in providers:
        raise ConfigError(dotted, f"no provider {name!r} is configured (configured: "
                                  f"{', '.join(sorted(providers))}); add [providers.{name}]")


_CAP_SCOPES = ("operations", "users", "providers")


def _budgets(table: Mapping[str, Any]) -> BudgetsConfig:
    plain = {key: value for key, value in table.items() if key not in _CAP_SCOPES}
    scopes: dict[str, dict[str, CapConfig]] = {}
    for scope in _CAP_SCOPES:
        scoped = _table_at(table, scope, f"budgets.{scope}")
        scopes[scope] = {
            name: _section(CapConfig, _table_at(scoped, name, f"budgets.{scope}.{name}"),
                           f"budgets.{scope}.{name}")
            for name in scoped
        }
    budgets = dataclasses.replace(
        _section(BudgetsConfig, plain, "budgets"),
        operations=scopes["operations"], users=scopes["users"], providers=scopes["providers"],
    )
    if not 0 < budgets.warn_fraction <= 1:
        raise ConfigError("budgets.warn_fraction", "must be more than 0 and at most 1")
    if budgets.unknown_max_output_tokens < 1:
        raise ConfigError("budgets.unknown_max_output_tokens", "must be at least 1")
    return budgets


def _budgets_to_table(budgets: BudgetsConfig) -> dict[str, Any]:
    table = {k: v for k, v in _section_to_table(budgets).items() if k not in _CAP_SCOPES}
    for scope in _CAP_SCOPES:
        table[scope] = {name: _section_to_table(cap)
                        for name, cap in getattr(budgets, scope).items()}
    return table


def _provider_defaults(name: str) -> ProviderConfig:
    """Defaults for a provider table: the OpenAI ones, with the plugin named after the table."""
    if name == "openai":
        return ProviderConfig()
    if name == "ollama":  # a local Ollama: its OpenAI-compatible routes, no key
        return ProviderConfig(plugin="ollama", base_url="http://127.0.0.1:11434/v1",
                              api_key_env="", api_key_credential="")
    return ProviderConfig(plugin=name, base_url="", api_key_env="", api_key_credential="")


def _table_at(table: Mapping[str, Any], key: str, dotted: str) -> Mapping[str, Any]:
    value = table.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(dotted, f"must be a table ([{dotted}]), got {type(value).__name__}")
    return value


def _refuse_unknown(table: Mapping[str, Any], known: set[str], prefix: str) -> None:
    for key in table:
        if key not in known:
            dotted = f"{prefix}{key}"
            raise ConfigError(dotted, f"unknown key (known here: {', '.join(sorted(known))})")


def _section(
    cls: type[_Section],
    table: Mapping[str, Any],
    prefix: str,
    *,
    defaults: _Section | None = None,
) -> _Section:
    """Build one section dataclass from its table, validating each value by its field kind."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    _refuse_unknown(table, {f.name for f in fields}, f"{prefix}.")
    base = defaults if defaults is not None else cls()
    values: dict[str, Any] = {}
    for fld in fields:
        if fld.name in table:
            values[fld.name] = _convert(fld, table[fld.name], f"{prefix}.{fld.name}")
    return dataclasses.replace(base, **values)  # type: ignore[type-var]


def _convert(fld: dataclasses.Field[Any], value: Any, dotted: str) -> Any:
    kind = fld.metadata.get("kind")
    converters: dict[str | None, Callable[[Any], Any]] = {
        "duration": parse_duration,
        "size": parse_size,
        "mode": _parse_mode,
    }
    try:
        if kind in converters:
            return converters[kind](value)
        return _convert_plain(fld, value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(dotted, str(exc)) from None


def _convert_plain(fld: dataclasses.Field[Any], value: Any) -> Any:
    expected = fld.type if isinstance(fld.type, str) else getattr(fld.type, "__name__", "")
    expected = expected.removesuffix(" | None")  # optional keys: absent means inherit
    if expected.startswith("Mapping["):
        raise TypeError("must be a table")
    if expected == "float":
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise TypeError(f"expected a non-negative number, got {value!r}")
        return float(value)
    if expected == "str":
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        choices = fld.metadata.get("choices")
        if choices and value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value
    if expected == "int":
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise TypeError(f"expected a non-negative integer, got {value!r}")
        return value
    if expected == "bool":
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value
    if expected.startswith("tuple[str"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"expected a list of strings, got {value!r}")
        return tuple(value)
    raise TypeError(f"no converter for {expected}")  # a programming error, not an operator's


def _parse_mode(value: Any) -> int:
    if isinstance(value, str):
        try:
            mode = int(value, 8)
        except ValueError:
            raise ValueError(f"expected an octal file mode like '0660', got {value!r}") from None
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        raise ValueError(f"expected an octal file mode like '0660', got {value!r}")
    if not 0 <= mode <= 0o777:
        raise ValueError(f"file mode {value!r} is outside 0000..0777")
    return mode


def _section_to_table(section: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fld in dataclasses.fields(section):
        value = getattr(section, fld.name)
        if value is None:
            continue  # TOML has no null: an unset optional key is left out
        kind = fld.metadata.get("kind")
        if kind == "duration":
            value = format_duration(value)
        elif kind == "size":
            value = format_size(value)
        elif kind == "mode":
            value = f"{value:04o}"
        elif isinstance(value, tuple):
            value = list(value)
        out[fld.name] = value
    return out


def _apply_env_overrides(table: dict[str, Any], env: Mapping[str, str]) -> None:
    """Fold environment overrides into the parsed file table, before validation."""
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX):].split("__")]
        if any(not part for part in path):
            continue
        _set_in(table, path, _env_value(raw))
    if "LLMSPOOL_SOCKET" in env:
        _set_in(table, ["daemon", "socket"], env["LLMSPOOL_SOCKET"])
    if "LLMSPOOL_STATE_DIR" in env:
        _set_in(table, ["daemon", "state_dir"], env["LLMSPOOL_STATE_DIR"])
    if env.get("OPENAI_BASE_URL"):
        _set_in(table, ["providers", "openai", "base_url"], env["OPENAI_BASE_URL"])


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _set_in(table: dict[str, Any], path: list[str], value: Any) -> None:
    node = table
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(".".join(path), "an environment override names a key inside a value")
        node = child
    node[path[-1]] = value
