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

Every problem in a file is found in one pass: ``config_from_table`` raises ``ConfigProblems``
(a ``ConfigError`` keyed by the first) listing them all, so ``llmspool config check`` can print
one line per problem while the daemon's one-line refusal stays as it was.

``[providers.NAME]`` takes the keys every provider has (``ProviderConfig``) and those its
plugin declares (``ConfigKey``, registered with the kind: see ``llmspool.core.hookspecs``); the
plugin's own keys land in ``ProviderConfig.options``, checked against their declared types.

``config_to_table`` turns a config back into a TOML-ready table (the round trip is exact).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from llmspool.core.errors import ConfigError
from llmspool.core.units import format_duration, format_size, parse_duration, parse_size
from llmspool.sim.config import SimConfig

ENV_PREFIX = "LLMSPOOL_"
LOG_LEVELS = ("debug", "info", "warning", "error")
TRACING_MODES = ("auto", "on", "off")
SHORT_DEADLINE = ("refuse", "best_effort")


def _duration(default: str) -> Any:
    return field(default=parse_duration(default), metadata={"kind": "duration"})


def _size(default: str) -> Any:
    return field(default=parse_size(default), metadata={"kind": "size"})


KeyType = Literal["str", "int", "float", "bool", "duration", "size", "list[str]"]
KEY_TYPES: tuple[str, ...] = get_args(KeyType)


@dataclass(frozen=True, slots=True)
class ConfigKey:
    """A key a provider plugin declares for its ``[providers.NAME]`` tables.

    ``default`` is written as an operator would write it in TOML (``"5m"`` for a duration);
    ``help`` is one line saying what the key does. A plugin may also declare a key every
    provider has (``base_url``...) to give it its own default and help; its type must then be
    that key's type.
    """

    name: str
    type: KeyType
    default: Any
    help: str
    choices: tuple[str, ...] = ()

    def convert(self, value: Any) -> Any:
        """``value`` as read from TOML, checked against the key's type: seconds for a duration,
        bytes for a size, a tuple for a list. Raises ``ValueError`` or ``TypeError`` saying
        what was expected."""
        if self.type == "duration":
            return parse_duration(value)
        if self.type == "size":
            return parse_size(value)
        return _check_plain(self.type, value, self.choices)

    @property
    def default_value(self) -> Any:
        """The default, converted as ``convert`` converts a value from the file."""
        return self.convert(self.default)


ProviderKeys = Mapping[str, Sequence[ConfigKey]]
"""The keys each provider kind declares, by kind
(``llmspool.core.plugins.provider_config_keys``)."""


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
    # The keys the provider's plugin declared and the file set, converted to their types
    # (a key left out is absent: the plugin reads it with ``ProviderSettings.option``).
    options: Mapping[str, Any] = field(default_factory=dict, metadata={"kind": "options"})


@dataclass(frozen=True, slots=True)
class PricingConfig:
    """``[pricing]``: price files laid over the bundled price table, in order."""

    # A path or a list of paths in TOML; relative paths are relative to the config file.
    file: tuple[str, ...] = field(default=(), metadata={"kind": "paths"})


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

COMMON_PROVIDER_KEYS: tuple[str, ...] = tuple(
    fld.name for fld in dataclasses.fields(ProviderConfig) if fld.metadata.get("kind") != "options"
)
"""The keys every ``[providers.NAME]`` takes, whatever its plugin."""

# Keys a plugin may not give a default of its own: the kind is the table's choice, the models
# its operator's, and an API key goes only where the operator sends it (a second
# OpenAI-compatible provider must name its own variable, or OPENAI_API_KEY would be sent to a
# host it was never meant for).
FIXED_PROVIDER_KEYS = frozenset({"plugin", "models", "api_key_env", "api_key_credential"})


class ConfigProblems(ConfigError):
    """Every problem found in one config, in the order of the file. ``key`` and the message are the
    first one's, with a count of the others, so the daemon still refuses in one line;
    ``problems`` has them all (``llmspool config check`` prints one line each)."""

    def __init__(self, problems: Sequence[ConfigError]) -> None:
        first = problems[0]
        message = str(first).removeprefix(f"{first.key}: ")
        if len(problems) > 1:
            message += (f" (and {len(problems) - 1} more; `llmspool config check` lists them "
                        "all)")
        super().__init__(first.key, message)
        self.problems: tuple[ConfigError, ...] = tuple(problems)


# The problems of the load in progress: a problem is noted and the rest of the file still
# checked, so that one run of `llmspool config check` shows every mistake, not the first.
_PROBLEMS: ContextVar[list[ConfigError] | None] = ContextVar("llmspool_config_problems",
                                                             default=None)


@contextmanager
def _collecting() -> Iterator[list[ConfigError]]:
    problems: list[ConfigError] = []
    token = _PROBLEMS.set(problems)
    try:
        yield problems
    finally:
        _PROBLEMS.reset(token)


def _problem(error: ConfigError) -> None:
    """Note ``error`` and go on checking; outside ``config_from_table``, raise it."""
    problems = _PROBLEMS.get()
    if problems is None:
        raise error
    problems.append(error)


@dataclass(frozen=True, slots=True)
class EnvOverride:
    """One environment variable that sets a config key (``path``, split at the dots)."""

    variable: str
    path: tuple[str, ...]
    value: Any


def config_file(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Path | None:
    """The file the daemon reads: ``path``, else ``$LLMSPOOL_CONFIG``, else none (it then runs
    on the built-in defaults and the environment)."""
    env = os.environ if environ is None else environ
    chosen = path if path is not None else env.get("LLMSPOOL_CONFIG") or None
    return None if chosen is None else Path(chosen)


def read_config_file(path: Path) -> dict[str, Any]:
    """The TOML table of ``path``, with relative ``[pricing] file`` paths made relative to the
    file's directory (the daemon runs in /, where a bare name would mean nothing).

    Raises ``ConfigError`` (key ``config``) for a file that is missing, unreadable or not TOML.
    """
    try:
        with path.open("rb") as handle:
            table = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(
            "config", f"{path} does not exist (write one with `llmspool config init {path}`)"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from exc
    except OSError as exc:  # unreadable: permissions (the service user), a directory...
        raise ConfigError(
            "config", f"cannot read {path}: {exc.strerror or exc}; the user running "
            "the daemon needs read access to it (e.g. chgrp llmspool and chmod 0640 it, "
            "and 0750 on its directory)") from None
    _anchor_price_files(table, path.absolute().parent)
    return table


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    provider_keys: ProviderKeys | None = None,
) -> Config:
    """Read the config file (``path``, or ``$LLMSPOOL_CONFIG``, or none) and apply the
    environment.

    Raises ``ConfigError`` naming the key for anything wrong (``ConfigProblems`` when the file
    was read: every problem in it), and for a file that was asked for but does not exist.
    ``provider_keys`` is as for ``config_from_table``.
    """
    env = os.environ if environ is None else environ
    chosen = config_file(path, environ=env)
    table = read_config_file(chosen) if chosen is not None else {}
    _apply_env_overrides(table, env)
    return config_from_table(table, provider_keys=provider_keys)


def config_from_table(
    table: Mapping[str, Any], *, provider_keys: ProviderKeys | None = None
) -> Config:
    """Validate a parsed TOML table into a ``Config``.

    ``provider_keys`` are the keys each provider kind declares; by default those of the
    installed plugins, loaded only when the table has a ``[providers]`` table. Raises
    ``ConfigProblems`` with every problem found.
    """
    config: Config | None = None
    with _collecting() as problems:
        try:
            config = _config(table, provider_keys)
        except ConfigError as exc:  # a problem that leaves nothing to check further
            problems.append(exc)
    if problems or config is None:
        # In the file's order of sections (providers are built first, being needed by others).
        order = {section: index for index, section in enumerate(table)}
        problems.sort(key=lambda problem: order.get(problem.key.split(".")[0], len(order)))
        raise ConfigProblems(problems)
    return config


def _config(table: Mapping[str, Any], provider_keys: ProviderKeys | None) -> Config:
    _refuse_unknown(table, {f.name for f in dataclasses.fields(Config)} - {"retry_providers"}, "")
    providers_table = _table_at(table, "providers", "providers")
    if providers_table and provider_keys is None:
        provider_keys = _installed_provider_keys()
    providers = {
        name: _provider(name, _table_at(providers_table, name, f"providers.{name}"),
                        provider_keys or {})
        for name in providers_table
    } or _default_providers()
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
        sim=_sim(_table_at(table, "sim", "sim")),
    )


def config_to_table(config: Config) -> dict[str, Any]:
    """The TOML-ready table of ``config`` (durations and sizes spelled as an operator would)."""
    return {
        "daemon": _section_to_table(config.daemon),
        "providers": {name: {**_section_to_table(p), **_options_to_table(p.options)}
                      for name, p in config.providers.items()},
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


def check_plugin_keys(keys: Sequence[ConfigKey]) -> None:
    """Check the keys a provider kind declares; raises ``ValueError`` saying what is wrong (a
    plugin's mistake, reported when plugins load)."""
    seen: set[str] = set()
    fields = {fld.name: fld for fld in dataclasses.fields(ProviderConfig)}
    for key in keys:
        if not key.name.isidentifier() or key.name != key.name.lower():
            raise ValueError(f"key {key.name!r}: a key name is lower_case_with_underscores")
        if key.name in seen:
            raise ValueError(f"key {key.name!r} is declared twice")
        seen.add(key.name)
        if key.type not in KEY_TYPES:
            raise ValueError(f"key {key.name!r}: type {key.type!r} is not one of "
                             f"{', '.join(KEY_TYPES)}")
        if key.name in FIXED_PROVIDER_KEYS:
            raise ValueError(f"key {key.name!r} belongs to the daemon; a plugin cannot give it "
                             "a default")
        if key.name in fields:
            common = _field_key_type(fields[key.name])
            if common != key.type:
                raise ValueError(f"key {key.name!r} is a {common} for every provider, not a "
                                 f"{key.type}")
        if not key.help.strip():
            raise ValueError(f"key {key.name!r} has no help line")
        try:
            key.default_value  # noqa: B018 (evaluated for the check)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"key {key.name!r}: its default {key.default!r} is not valid: "
                             f"{exc}") from None


def environment_overrides(environ: Mapping[str, str]) -> list[EnvOverride]:
    """The config keys the environment sets, in the order they are applied (a later one
    wins): ``LLMSPOOL_<SECTION>__<KEY>``, then ``LLMSPOOL_SOCKET``, ``LLMSPOOL_STATE_DIR`` and
    ``OPENAI_BASE_URL``."""
    overrides: list[EnvOverride] = []
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = tuple(part.lower() for part in name[len(ENV_PREFIX):].split("__"))
        if any(not part for part in path):
            continue
        overrides.append(EnvOverride(name, path, _env_value(raw)))
    for variable, path in (("LLMSPOOL_SOCKET", ("daemon", "socket")),
                           ("LLMSPOOL_STATE_DIR", ("daemon", "state_dir"))):
        if variable in environ:
            overrides.append(EnvOverride(variable, path, environ[variable]))
    if environ.get("OPENAI_BASE_URL"):
        overrides.append(EnvOverride("OPENAI_BASE_URL", ("providers", "openai", "base_url"),
                                     environ["OPENAI_BASE_URL"]))
    return overrides


def _installed_provider_keys() -> ProviderKeys:
    # Imported here: the plugin contract imports this module (ProviderConfig).
    from llmspool.core.plugins import provider_config_keys

    return provider_config_keys()


def _provider(name: str, table: Mapping[str, Any], provider_keys: ProviderKeys) -> ProviderConfig:
    """One ``[providers.NAME]``: the keys every provider takes, and those its plugin declares."""
    dotted = f"providers.{name}"
    kind = table.get("plugin", name)
    declared: Sequence[ConfigKey] | None = None
    if not isinstance(kind, str):
        kind = name  # the common keys' check below names the bad value
    elif kind not in provider_keys:
        installed = ", ".join(sorted(provider_keys)) or "none installed"
        _problem(ConfigError(f"{dotted}.plugin", f"no plugin provides {kind!r} (installed: "
                                                 f"{installed}; `llmspool plugins` lists them)"))
    else:
        declared = provider_keys[kind]
    own = {key.name: key for key in declared or () if key.name not in COMMON_PROVIDER_KEYS}
    options: dict[str, Any] = {}
    for key, value in table.items():
        if key in COMMON_PROVIDER_KEYS:
            continue
        if key in own:
            try:
                options[key] = own[key].convert(value)
            except (TypeError, ValueError) as exc:
                _problem(ConfigError(f"{dotted}.{key}", str(exc)))
        elif declared is not None:  # an unknown plugin's keys cannot be judged
            _problem(ConfigError(f"{dotted}.{key}", _unknown_provider_key(kind, own)))
    common = {key: value for key, value in table.items() if key in COMMON_PROVIDER_KEYS}
    provider = _section(ProviderConfig, common, dotted,
                        defaults=_provider_defaults(name, kind, declared or ()))
    return dataclasses.replace(provider, options=options)


def _unknown_provider_key(kind: str, own: Mapping[str, ConfigKey]) -> str:
    declared = (f"plugin {kind!r} adds {', '.join(sorted(own))}" if own
                else f"plugin {kind!r} adds none")
    return (f"unknown key ({declared}; every provider takes "
            f"{', '.join(COMMON_PROVIDER_KEYS)})")


def _provider_defaults(name: str, kind: str, declared: Sequence[ConfigKey]) -> ProviderConfig:
    """Defaults of a provider table: OpenAI's for the one named openai; for any other, no base
    URL and no API key (see ``FIXED_PROVIDER_KEYS``); then the defaults its plugin declares."""
    base = ProviderConfig(plugin=kind)
    if name != "openai":
        base = dataclasses.replace(base, base_url="", api_key_env="", api_key_credential="")
    overrides = {key.name: key.default_value for key in declared
                 if key.name in COMMON_PROVIDER_KEYS}
    return dataclasses.replace(base, **overrides)


def _field_key_type(fld: dataclasses.Field[Any]) -> str:
    """The ``ConfigKey`` type that describes a ``ProviderConfig`` field."""
    kind = fld.metadata.get("kind")
    if kind in ("duration", "size"):
        return str(kind)
    return _plain_type(fld)


def _plain_type(fld: dataclasses.Field[Any]) -> str:
    expected = fld.type if isinstance(fld.type, str) else getattr(fld.type, "__name__", "")
    expected = expected.removesuffix(" | None")  # optional keys: absent means inherit
    return "list[str]" if expected.startswith("tuple[str") else expected


def _options_to_table(options: Mapping[str, Any]) -> dict[str, Any]:
    return {name: list(value) if isinstance(value, tuple) else value
            for name, value in options.items()}


def _sim(table: Mapping[str, Any]) -> SimConfig:
    try:
        return SimConfig.from_table(table)
    except ConfigError as exc:  # the simulator's checks stop at the first problem
        _problem(exc)
        return SimConfig()


def _resilience(table: Mapping[str, Any], providers: Mapping[str, ProviderConfig]) -> Any:
    """``[retry]``, ``[breaker]``, ``[failover]`` and ``[limits]``, checked against the
    configured providers (a failover or a limit naming an unknown provider is a typo)."""
    retry_table = dict(_table_at(table, "retry", "retry"))
    retry_providers_table = _table_at(retry_table, "providers", "retry.providers")
    retry_table.pop("providers", None)
    retry = _section(RetryConfig, retry_table, "retry")
    retry_providers = {}
    for name in retry_providers_table:
        if not _known_provider(name, providers, f"retry.providers.{name}"):
            continue
        retry_providers[name] = _section(
            RetryConfig, _table_at(retry_providers_table, name, f"retry.providers.{name}"),
            f"retry.providers.{name}", defaults=retry,
        )
    for dotted, settings in [("retry", retry), *((f"retry.providers.{n}", r)
                                                 for n, r in retry_providers.items())]:
        if settings.max_attempts < 1:
            _problem(ConfigError(f"{dotted}.max_attempts", "must be at least 1 (1: never retry)"))
        if settings.budget_fraction > 1:
            _problem(ConfigError(f"{dotted}.budget_fraction", "must be at most 1"))
        if settings.backoff_max < settings.backoff_min:
            _problem(ConfigError(f"{dotted}.backoff_max", "must not be less than backoff_min"))
    breaker = _section(BreakerConfig, _table_at(table, "breaker", "breaker"), "breaker")
    if breaker.failures < 1:
        _problem(ConfigError("breaker.failures", "must be at least 1"))
    if not 0 < breaker.failure_rate <= 1:
        _problem(ConfigError("breaker.failure_rate", "must be more than 0 and at most 1"))
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
            _problem(ConfigError(f"cache.{name}", f"expected a cosine similarity in (0, 1], got "
                                                  f"{value}"))
    return cache


def _failover(table: Mapping[str, Any], providers: Mapping[str, ProviderConfig]) -> FailoverConfig:
    models_table = _table_at(table, "models", "failover.models")
    stand_ins: dict[str, str] = {}
    for name, value in table.items():
        if name == "models":
            continue
        dotted = f"failover.{name}"
        if not _known_provider(name, providers, dotted):
            continue
        if not isinstance(value, str):
            _problem(ConfigError(dotted, f"expected the name of a provider, got {value!r}"))
        elif not _known_provider(value, providers, dotted):
            continue
        elif value == name:
            _problem(ConfigError(dotted, "a provider cannot fail over to itself"))
        else:
            stand_ins[name] = value
    models: dict[str, str] = {}
    for model, value in models_table.items():
        if not isinstance(value, str) or not value:
            _problem(ConfigError(f"failover.models.{model}",
                                 f"expected a model name, got {value!r}"))
        else:
            models[model] = value
    return FailoverConfig(stand_ins, models)


def _limits(table: Mapping[str, Any],
            providers: Mapping[str, ProviderConfig]) -> dict[str, dict[str, LimitConfig]]:
    limits: dict[str, dict[str, LimitConfig]] = {}
    for provider in table:
        if not _known_provider(provider, providers, f"limits.{provider}"):
            continue
        models = _table_at(table, provider, f"limits.{provider}")
        limits[provider] = {
            model: _section(LimitConfig, _table_at(models, model, f"limits.{provider}.{model}"),
                            f'limits.{provider}."{model}"')
            for model in models
        }
    return limits


def _known_provider(name: str, providers: Mapping[str, ProviderConfig], dotted: str) -> bool:
    if name in providers:
        return True
    _problem(ConfigError(dotted, f"no provider {name!r} is configured (configured: "
                                 f"{', '.join(sorted(providers))}); add [providers.{name}]"))
    return False


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
        _problem(ConfigError("budgets.warn_fraction", "must be more than 0 and at most 1"))
    if budgets.unknown_max_output_tokens < 1:
        _problem(ConfigError("budgets.unknown_max_output_tokens", "must be at least 1"))
    return budgets


def _budgets_to_table(budgets: BudgetsConfig) -> dict[str, Any]:
    table = {k: v for k, v in _section_to_table(budgets).items() if k not in _CAP_SCOPES}
    for scope in _CAP_SCOPES:
        table[scope] = {name: _section_to_table(cap)
                        for name, cap in getattr(budgets, scope).items()}
    return table


def _table_at(table: Mapping[str, Any], key: str, dotted: str) -> Mapping[str, Any]:
    value = table.get(key, {})
    if not isinstance(value, Mapping):
        _problem(ConfigError(dotted, f"must be a table ([{dotted}]), got "
                                     f"{type(value).__name__}"))
        return {}
    return value


def _refuse_unknown(table: Mapping[str, Any], known: set[str], prefix: str) -> None:
    for key in table:
        if key not in known:
            dotted = f"{prefix}{key}"
            _problem(ConfigError(dotted, f"unknown key (known here: {', '.join(sorted(known))})"))


def _section(
    cls: type[_Section],
    table: Mapping[str, Any],
    prefix: str,
    *,
    defaults: _Section | None = None,
) -> _Section:
    """Build one section dataclass from its table, validating each value by its field kind; a
    bad value is a problem noted, and the default stands in for it."""
    fields = {fld.name: fld for fld in dataclasses.fields(cls)  # type: ignore[arg-type]
              if fld.metadata.get("kind") != "options"}
    base = defaults if defaults is not None else cls()
    values: dict[str, Any] = {}
    for key, value in table.items():  # in the file's order, so problems are listed in it
        fld = fields.get(key)
        if fld is None:
            _refuse_unknown({key: value}, set(fields), f"{prefix}.")
            continue
        try:
            values[key] = _convert(fld, value, f"{prefix}.{key}")
        except ConfigError as exc:
            _problem(exc)
    return dataclasses.replace(base, **values)  # type: ignore[type-var]


def _convert(fld: dataclasses.Field[Any], value: Any, dotted: str) -> Any:
    kind = fld.metadata.get("kind")
    converters: dict[str | None, Callable[[Any], Any]] = {
        "duration": parse_duration,
        "size": parse_size,
        "mode": _parse_mode,
        "paths": _parse_paths,
    }
    try:
        if kind in converters:
            return converters[kind](value)
        return _check_plain(_plain_type(fld), value, fld.metadata.get("choices", ()))
    except (ValueError, TypeError) as exc:
        raise ConfigError(dotted, str(exc)) from None


def _check_plain(expected: str, value: Any, choices: Sequence[str]) -> Any:
    """``value`` checked as a TOML value of type ``expected`` (as ``ConfigKey`` names types)."""
    if expected.startswith("Mapping["):
        raise TypeError("must be a table")
    if expected == "float":
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise TypeError(f"expected a non-negative number, got {value!r}")
        return float(value)
    if expected == "str":
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
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
    if expected == "list[str]":
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
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


def _parse_paths(value: Any) -> tuple[str, ...]:
    """A path or a list of paths; "" (or []) is none."""
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list | tuple) and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise TypeError(f"expected a path or a list of paths, got {value!r}")


def _paths_to_table(paths: tuple[str, ...]) -> str | list[str]:
    """As an operator writes it: "" for none, a string for one, a list for more."""
    if len(paths) <= 1:
        return paths[0] if paths else ""
    return list(paths)


def _anchor_price_files(table: dict[str, Any], directory: Path) -> None:
    """Make relative ``[pricing] file`` paths relative to ``directory``; a value of the wrong
    type is left for the validation to name."""
    pricing = table.get("pricing")
    if not isinstance(pricing, dict):
        return
    value = pricing.get("file")
    if isinstance(value, str) and value:
        pricing["file"] = str(directory / value)  # an absolute value stays as it is
    elif isinstance(value, list):
        pricing["file"] = [str(directory / v) if isinstance(v, str) and v else v for v in value]


def _section_to_table(section: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fld in dataclasses.fields(section):
        value = getattr(section, fld.name)
        kind = fld.metadata.get("kind")
        if value is None or kind == "options":
            continue  # TOML has no null: an unset optional key is left out
        if kind == "duration":
            value = format_duration(value)
        elif kind == "size":
            value = format_size(value)
        elif kind == "mode":
            value = f"{value:04o}"
        elif kind == "paths":
            value = _paths_to_table(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[fld.name] = value
    return out


def _apply_env_overrides(table: dict[str, Any], env: Mapping[str, str]) -> None:
    """Fold environment overrides into the parsed file table, before validation."""
    for override in environment_overrides(env):
        _set_in(table, list(override.path), override.value)


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
