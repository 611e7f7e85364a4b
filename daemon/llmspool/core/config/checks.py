"""The checks of the tables that are more than a section of fields: ``[providers.NAME]``
(the plugin's declared keys), ``[retry]``, ``[breaker]``, ``[failover]``, ``[limits]``,
``[cache]``, ``[budgets]`` and ``[store]``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from llmspool.core.config.sections import (
    COMMON_PROVIDER_KEYS,
    BreakerConfig,
    BudgetsConfig,
    CacheConfig,
    CapConfig,
    FailoverConfig,
    LimitConfig,
    ProviderConfig,
    RetryConfig,
    StoreConfig,
)
from llmspool.core.config.tables import _problem, _section, _section_to_table, _table_at
from llmspool.core.config.values import ConfigKey, ProviderKeys
from llmspool.core.errors import ConfigError


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


STORE_SCHEMES = ("postgresql://", "postgres://")
SYNC_INTERVALS = (0.01, 60.0)  # seconds: [store] sync_interval's bounds


def _store(table: Mapping[str, Any]) -> StoreConfig:
    store = _section(StoreConfig, table, "store")
    if store.url and not store.url.startswith(STORE_SCHEMES):
        _problem(ConfigError("store.url", f"expected \"\" (SQLite in the state directory) or "
                                          f"a postgresql:// URL, got {store.url!r}"))
        return StoreConfig()
    # A value refused is told and replaced by its default, so that the next is checked too.
    defaults = StoreConfig()
    if store.lease < 3.0:
        _problem(ConfigError("store.lease", f"expected at least 3s (a daemon renews its lease "
                                            f"three times a lease), got {store.lease}s"))
        store = dataclasses.replace(store, lease=defaults.lease)
    if not SYNC_INTERVALS[0] <= store.sync_interval <= SYNC_INTERVALS[1]:
        _problem(ConfigError("store.sync_interval", (
            f"expected 10ms to 1m (how long a commit may wait to be synced to disk), got "
            f"{store.sync_interval}s")))
        store = dataclasses.replace(store, sync_interval=defaults.sync_interval)
    return store


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
