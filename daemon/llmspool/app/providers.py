"""What the plugins give a daemon: one provider instance per ``[providers.NAME]``, each with its
API key (a systemd credential file first, then the environment), and the model chooser of the
operations' routes and cascades with the plugins' request scorer and answer check."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from llmspool.core.config.sections import Config, ProviderConfig
from llmspool.core.errors import ConfigError
from llmspool.core.plugins import answer_hooks, load_provider_kinds
from llmspool.core.provider import Provider, ProviderSettings
from llmspool.policy.model_choice import ModelChooser

log = logging.getLogger(__name__)


def resolve_api_key(provider: ProviderConfig, environ: Mapping[str, str]) -> str:
    """The provider's API key: a systemd credential file first, then the environment."""
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials and provider.api_key_credential:
        path = Path(credentials) / provider.api_key_credential
        if path.is_file():
            return path.read_text(encoding="utf-8").strip()
    return environ.get(provider.api_key_env, "") if provider.api_key_env else ""


def build_providers(
    config: Config, environ: Mapping[str, str], extra_plugins: Iterable[object] = ()
) -> dict[str, Provider]:
    kinds = load_provider_kinds(extra_plugins)
    providers: dict[str, Provider] = {}
    for name, provider_config in config.providers.items():
        factory = kinds.get(provider_config.plugin)
        if factory is None:
            known = ", ".join(sorted(kinds)) or "none installed"
            raise ConfigError(
                f"providers.{name}.plugin",
                f"no plugin provides {provider_config.plugin!r} (installed: {known})",
            )
        api_key = resolve_api_key(provider_config, environ)
        if not api_key and provider_config.api_key_env:
            log.warning(
                "provider %s has no API key (set %s, or the systemd credential %s); "
                "its upstream will refuse calls",
                name, provider_config.api_key_env, provider_config.api_key_credential,
            )
        providers[name] = factory(ProviderSettings(name, provider_config, api_key))
    return providers


def build_model_chooser(config: Config,
                        extra_plugins: Iterable[object] = ()) -> ModelChooser | None:
    """The operations' routes and cascades, with the plugins' scorer and answer check (None
    when no operation routes: the front door then leaves every model as asked)."""
    if not any(op.route or op.cascade for op in config.operations.values()):
        return None
    hooks = answer_hooks(extra_plugins)
    return ModelChooser(config.operations, scorer=hooks.score, check=hooks.accept)

