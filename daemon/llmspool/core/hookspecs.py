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

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import pluggy

from llmspool.core.config.values import ConfigKey
from llmspool.core.provider import LazyFactory, ProviderFactory

__all__ = ["PROJECT", "ConfigKey", "LazyFactory", "RegisterProvider", "hookimpl", "hookspec",
           "llmspool_accept_answer", "llmspool_register_providers", "llmspool_score_request"]

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


@hookspec(firstresult=True)
def llmspool_score_request(body: Mapping[str, Any], operation: str | None) -> float | None:
    """How complex a request is, from 0 (trivial) to 1 (hard), for ``[operations.NAME] route``
    rules with ``score_over`` or ``score_under``; None leaves it to the next plugin, and to the
    daemon's built-in heuristic last (``llmspool.policy.complexity``). Called on the daemon's
    event loop for each routed request: it must be quick and must not block.

    :param body: the request as the client sent it (OpenAI's shape), parsed.
    :param operation: the request's operation (``x-llmspool-operation``), if any.
    """


@hookspec(firstresult=True)
def llmspool_accept_answer(answer: Mapping[str, Any], body: Mapping[str, Any],
                           operation: str | None) -> bool | None:
    """Whether a cascade keeps the cheaper model's answer (``[operations.NAME] cascade``): False
    asks the larger model instead; None leaves it to the next plugin and to the configured
    checks. Called on the event loop: it must be quick and must not block.

    :param answer: the cheaper model's answer (OpenAI's shape), parsed.
    :param body: the request as the client sent it, parsed.
    :param operation: the request's operation.
    """
