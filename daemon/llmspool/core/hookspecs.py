"""The hooks a provider plugin implements. This is the whole plugin contract.

A plugin is a module or package registered in the entry-point group ``llmspool``::

    [project.entry-points.llmspool]
    myprovider = "llmspool_myprovider"

and implementing the hooks below with ``@hookimpl``, imported, as everything a plugin uses, from
``llmspool.plugin_api``. The built-in OpenAI and Ollama plugins load exactly this way::

    from llmspool.plugin_api import ConfigKey, LazyFactory, RegisterProvider, hookimpl

    KEYS = (ConfigKey("region", "str", "eu", "which of the API's regions to call",
                      choices=("eu", "us")),)

    @hookimpl
    def llmspool_register_providers(register: RegisterProvider) -> None:
        register("myprovider", LazyFactory("llmspool_myprovider.provider:MyProvider"),
                 keys=KEYS)

The plugin's keys are then valid in ``[providers.NAME]`` tables of its kind, checked against
their types when the config loads (an unknown key is refused, naming the keys there are), listed
by ``llmspool plugins`` and shown by ``llmspool config show``; the provider reads one with
``settings.option(KEY)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import pluggy

from llmspool.core.config.values import ConfigKey
from llmspool.core.provider import LazyFactory, ProviderFactory

__all__ = ["PROJECT", "ConfigKey", "LazyFactory", "RegisterProvider", "hookimpl", "hookspec",
           "llmspool_register_providers"]

PROJECT = "llmspool"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class RegisterProvider(Protocol):
    """The callback ``llmspool_register_providers`` gets."""

    def __call__(self, kind: str, factory: ProviderFactory, /, *,
                 keys: Sequence[ConfigKey] = ()) -> None:
        """Record one provider kind, and the config keys its ``[providers.NAME]`` tables take
        beyond those every provider has (see
        ``llmspool.core.config.sections.COMMON_PROVIDER_KEYS``); a key named like one of those
        gives it this kind's default and help instead."""
        ...


@hookspec
def llmspool_register_providers(register: RegisterProvider) -> None:
    """Register the provider kinds this plugin offers.

    Call ``register(kind, factory, keys=...)`` once per kind. ``kind`` is what
    ``[providers.NAME] plugin`` names in the config; ``factory(settings)`` builds a
    ``llmspool.core.provider.Provider`` for one configured provider (a ``LazyFactory`` defers
    importing it); ``keys`` declares the kind's config keys. Not ``firstresult``: every
    plugin's registrations are collected, and registering a kind twice is an error that names
    both plugins, as is a key declared wrongly.

    :param register: the callback that records one provider kind.
    """
