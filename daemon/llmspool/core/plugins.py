"""Loading provider plugins: one pluggy manager per daemon, fed from the ``llmspool`` entry points.

There is no module-global plugin manager: ``load_provider_specs`` builds one, asks every plugin
to register its kinds, and returns them with the keys each declares and the package that
brought it (name and version, from its distribution's metadata). Tests pass extra plugin
objects to add doubles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pluggy

from llmspool.core import hookspecs
from llmspool.core.config.sections import check_plugin_keys
from llmspool.core.config.values import ConfigKey
from llmspool.core.errors import ConfigError
from llmspool.core.provider import ProviderFactory


@dataclass(frozen=True, slots=True)
class ProviderKind:
    """One provider kind as a plugin registered it."""

    kind: str
    factory: ProviderFactory
    keys: tuple[ConfigKey, ...]
    plugin: str  # the plugin's name: its entry point's, for an installed one
    package: str | None  # the distribution it came in (None: not installed, e.g. a test's)
    version: str | None


def plugin_manager(extra_plugins: Iterable[object] = ()) -> pluggy.PluginManager:
    """A plugin manager with the entry-point plugins and ``extra_plugins`` registered."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.load_setuptools_entrypoints(hookspecs.PROJECT)
    for plugin in extra_plugins:
        manager.register(plugin)
    return manager


def load_provider_specs(extra_plugins: Iterable[object] = ()) -> dict[str, ProviderKind]:
    """Every provider kind the installed plugins register, by kind name.

    Raises ``ConfigError`` (key ``plugins``) for a kind registered twice or a key declared
    wrongly, naming the plugin.
    """
    manager = plugin_manager(extra_plugins)
    packages = {id(plugin): (dist.project_name, dist.version)
                for plugin, dist in manager.list_plugin_distinfo()}
    kinds: dict[str, ProviderKind] = {}
    current: list[tuple[str, object]] = [("?", None)]

    def register(kind: str, factory: ProviderFactory, /, *,
                 keys: Sequence[ConfigKey] = ()) -> None:
        name, plugin = current[0]
        if kind in kinds:
            raise ConfigError(
                "plugins",
                f"provider kind {kind!r} is registered by both {kinds[kind].plugin} and {name}",
            )
        try:
            check_plugin_keys(keys)
        except ValueError as exc:
            raise ConfigError("plugins", f"plugin {name}, provider kind {kind!r}: {exc}; "
                                         "the plugin needs fixing") from None
        package, version = packages.get(id(plugin), (None, None))
        kinds[kind] = ProviderKind(kind, factory, tuple(keys), name, package, version)

    for impl in manager.hook.llmspool_register_providers.get_hookimpls():
        current[0] = (impl.plugin_name, impl.plugin)
        impl.function(register=register)
    return kinds


def load_provider_kinds(extra_plugins: Iterable[object] = ()) -> dict[str, ProviderFactory]:
    """Every provider kind the installed plugins register: its factory, by kind name."""
    return {kind: spec.factory for kind, spec in load_provider_specs(extra_plugins).items()}


@dataclass(frozen=True, slots=True)
class AnswerHooks:
    """The plugins' ``llmspool_score_request`` and ``llmspool_accept_answer`` (each None when
    no plugin implements it)."""

    score: Callable[[Mapping[str, Any], str | None], float | None] | None
    accept: Callable[[Mapping[str, Any], Mapping[str, Any], str | None], bool | None] | None


def answer_hooks(extra_plugins: Iterable[object] = ()) -> AnswerHooks:
    """The request scorer and answer check the installed plugins (and ``extra_plugins``)
    offer."""
    hook = plugin_manager(extra_plugins).hook
    scorers, checks = hook.llmspool_score_request, hook.llmspool_accept_answer

    def score(body: Mapping[str, Any], operation: str | None) -> float | None:
        result: float | None = scorers(body=body, operation=operation)
        return result

    def accept(answer: Mapping[str, Any], body: Mapping[str, Any],
               operation: str | None) -> bool | None:
        result: bool | None = checks(answer=answer, body=body, operation=operation)
        return result

    return AnswerHooks(score if scorers.get_hookimpls() else None,
                       accept if checks.get_hookimpls() else None)


def provider_config_keys(extra_plugins: Iterable[object] = ()) -> dict[str, tuple[ConfigKey, ...]]:
    """The config keys each provider kind declares, by kind name (what ``load_config`` checks
    ``[providers.NAME]`` tables against)."""
    return {kind: spec.keys for kind, spec in load_provider_specs(extra_plugins).items()}
