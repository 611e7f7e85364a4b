"""The hooks a provider plugin implements. This is the whole plugin contract.

A plugin is a module or package registered in the entry-point group ``llmspool``::

    [project.entry-points.llmspool]
    myprovider = "llmspool_myprovider"

and implementing the hooks below with ``@llmspool.hookspecs.hookimpl``. The built-in OpenAI
plugin loads exactly this way.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from llmspool.provider import ProviderFactory

PROJECT = "llmspool"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

RegisterProvider = Callable[[str, ProviderFactory], None]


@hookspec
def llmspool_register_providers(register: RegisterProvider) -> None:
    """Register the provider kinds this plugin offers.

    Call ``register(kind, factory)`` once per kind. ``kind`` is what ``[providers.NAME] plugin``
    names in the config; ``factory(settings)`` builds a ``llmspool.provider.Provider`` for one
    configured provider. Not ``firstresult``: every plugin's registrations are collected, and
    registering a kind twice is an error that names both plugins.

    :param register: the callback that records one provider kind.
    """
