"""The daemon's configuration, table by table: every section is a frozen dataclass whose fields
carry their defaults, so ``Config()`` is complete and the daemon runs with no file at all.

The ``[sim]`` table belongs to the simulator (``llmspool.sim.config``): the daemon's config
leaves it alone, and ``llmspool config`` checks and shows it with the simulator's own rules."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmspool.core.config.routes import CascadeConfig, RouteRule
from llmspool.core.config.values import KEY_TYPES, ConfigKey, _duration, _field_key_type, _size

LOG_LEVELS = ("debug", "info", "warning", "error")


TRACING_MODES = ("auto", "on", "off")


SHORT_DEADLINE = ("refuse", "best_effort")




@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """``[daemon]``: where the daemon listens and keeps its state, and how it behaves."""

    socket: str = "/run/llmspool/llmspool.sock"
    socket_mode: int = field(default=0o660, metadata={"kind": "mode"})
    state_dir: str = "/var/lib/llmspool"
    max_body_size: int = _size("32MiB")
    # Values a JSON body may hold (core/json_values.py): parsed, each costs ~100 bytes.
    max_json_values: int = 1_000_000
    # Bytes of request bodies held in memory at once, across connections (server/
    # body_budget.py); a body waits up to bodies_wait for room, then 503.
    max_bodies_in_memory: int = _size("256MiB")
    bodies_wait: float = _duration("10s")
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
    near-duplicate matching by embedding similarity for it. ``capture`` keeps the
    request/answer pairs of its successful chat calls for fine-tuning exports, for
    ``capture_retention`` (``[jobs] retention`` when left out).
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
    # Which model answers (``llmspool.core.config.routes``): rules tried in order, and a
    # cheaper model tried first whose answer is kept when it passes the checks.
    route: tuple[RouteRule, ...] = field(default=(), metadata={"kind": "routes"})
    cascade: CascadeConfig | None = field(default=None, metadata={"kind": "cascade"})
    capture: bool = False
    capture_retention: float | None = field(default=None, metadata={"kind": "duration"})


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


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """``[store]``: the database of jobs, batches, the ledger and budgets."""

    # "": SQLite in the state directory. "postgresql://USER@HOST/DB": PostgreSQL, which
    # several daemons may share (libpq's PGPASSWORD and ~/.pgpass supply a password).
    url: str = ""
    # This daemon's name in a shared store, on its ledger entries and reservations; unique
    # per daemon. "": the host name and the socket path.
    name: str = ""
    # How long a daemon's lease on a shared store lasts; it renews it three times a lease.
    # A daemon silent for longer is dead: another settles the calls it had in flight.
    lease: float = _duration("30s")
    # SQLite: the longest a commit waits to be synced to disk, by a checkpoint of the
    # write-ahead log (store/wal_checkpoints.py; sooner once 32 commits wait).
    sync_interval: float = _duration("1s")


def _default_providers() -> dict[str, ProviderConfig]:
    return {"openai": ProviderConfig()}


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration; ``Config()`` is the complete default."""

    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    providers: Mapping[str, ProviderConfig] = field(default_factory=_default_providers)
    pricing: PricingConfig = field(default_factory=PricingConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
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

    def retry_for(self, provider: str) -> RetryConfig:
        """The retry settings of ``provider``: ``[retry]`` with its own overrides."""
        return self.retry_providers.get(provider, self.retry)

    @property
    def state_path(self) -> Path:
        return Path(self.daemon.state_dir)


COMMON_PROVIDER_KEYS: tuple[str, ...] = tuple(
    fld.name for fld in dataclasses.fields(ProviderConfig) if fld.metadata.get("kind") != "options"
)


"""The keys every ``[providers.NAME]`` takes, whatever its plugin."""

# Keys a plugin may not give a default of its own: the kind is the table's choice, the models
# its operator's, and an API key goes only where the operator sends it (a second
# OpenAI-compatible provider must name its own variable, or OPENAI_API_KEY would be sent to a
# host it was never meant for).
FIXED_PROVIDER_KEYS = frozenset({"plugin", "models", "api_key_env", "api_key_credential"})


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
