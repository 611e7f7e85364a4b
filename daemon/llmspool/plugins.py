"""Loading provider plugins: one pluggy manager per daemon, fed from the ``llmspool`` entry points.

There is no module-global plugin manager: ``load_provider_kinds`` builds one, asks every plugin
to register its kinds, and returns them. Tests pass extra plugin objects to add doubles.
"""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from llmspool import hookspecs
from llmspool.errors import ConfigError
from llmspool.provider import ProviderFactory


def plugin_manager(extra_plugins: Iterable[object] = ()) -> pluggy.PluginManager:
    """A plugin manager with the entry-point plugins and ``extra_plugins`` registered."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.load_setuptools_entrypoints(hookspecs.PROJECT)
    for plugin in extra_plugins:
        manager.register(plugin)
    return manager


def load_provider_kinds(extra_plugins: Iterable[object] = ()) -> dict[str, ProviderFactory]:
    """Every provider kind the installed plugins register, by kind name."""
    manager = plugin_manager(extra_plugins)
    kinds: dict[str, ProviderFactory] = {}
    owners: dict[str, str] = {}
    current = ["?"]

    def register(kind: str, factory: ProviderFactory) -> None:
        if kind in kinds:
            raise ConfigError(
                "plugins",
                f"provider kind {kind!r} is registered by both {owners[kind]} and {current[0]}",
            )
        kinds[kind] = factory
        owners[kind] = current[0]

    for impl in manager.hook.llmspool_register_providers.get_hookimpls():
        current[0] = impl.plugin_name
        impl.function(register=register)
    return kinds
