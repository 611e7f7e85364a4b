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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmspool.core.config.checks import (
    _budgets,
    _budgets_to_table,
    _cache,
    _provider,
    _resilience,
    _store,
)
from llmspool.core.config.sections import (
    BatchConfig,
    Config,
    DaemonConfig,
    FilesConfig,
    FlexConfig,
    JobsConfig,
    OperationConfig,
    PlannerConfig,
    PricingConfig,
    TracingConfig,
    _default_providers,
)
from llmspool.core.config.tables import (
    ConfigProblems,
    _collecting,
    _problem,
    _refuse_unknown,
    _section,
    _section_to_table,
    _table_at,
)
from llmspool.core.config.values import ProviderKeys, _options_to_table
from llmspool.core.errors import ConfigError
from llmspool.core.plugins import provider_config_keys

ENV_PREFIX = "LLMSPOOL_"


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
    # [sim] is the simulator's (llmspool.sim.config reads it); the daemon leaves it alone.
    known = {f.name for f in dataclasses.fields(Config)} - {"retry_providers"} | {"sim"}
    _refuse_unknown(table, known, "")
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
    daemon = _section(DaemonConfig, _table_at(table, "daemon", "daemon"), "daemon")
    if daemon.max_json_values < 1:
        _problem(ConfigError("daemon.max_json_values", "must be at least 1"))
    if daemon.max_bodies_in_memory < daemon.max_body_size:
        _problem(ConfigError("daemon.max_bodies_in_memory", (
            f"must be at least daemon.max_body_size ({daemon.max_body_size} bytes): a body "
            "of that size could never be read")))
    return Config(
        daemon=daemon,
        providers=providers,
        pricing=_section(PricingConfig, _table_at(table, "pricing", "pricing"), "pricing"),
        tracing=_section(TracingConfig, _table_at(table, "tracing", "tracing"), "tracing"),
        store=_store(_table_at(table, "store", "store")),
        flex=_section(FlexConfig, _table_at(table, "flex", "flex"), "flex"),
        planner=_section(PlannerConfig, _table_at(table, "planner", "planner"), "planner"),
        jobs=_section(JobsConfig, _table_at(table, "jobs", "jobs"), "jobs"),
        files=_section(FilesConfig, _table_at(table, "files", "files"), "files"),
        batch=_section(BatchConfig, _table_at(table, "batch", "batch"), "batch"),
        operations=operations,
        budgets=_budgets(_table_at(table, "budgets", "budgets")),
        cache=_cache(_table_at(table, "cache", "cache")),
        **_resilience(table, providers),
    )


def config_to_table(config: Config) -> dict[str, Any]:
    """The TOML-ready table of ``config`` (durations and sizes spelled as an operator would)."""
    return {
        "daemon": _section_to_table(config.daemon),
        "providers": {name: {**_section_to_table(p), **_options_to_table(p.options)}
                      for name, p in config.providers.items()},
        "pricing": _section_to_table(config.pricing),
        "tracing": _section_to_table(config.tracing),
        "store": _section_to_table(config.store),
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
    }


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
    return provider_config_keys()


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
