"""The OpenAI provider plugin: standard, flex and priority calls, and the Batch API (files and
batches).

Registered through the ``llmspool`` entry-point group exactly like a third-party plugin, under
the provider kind ``openai`` (any OpenAI-compatible API can use it: set ``base_url``). Its
config keys are declared in ``llmspool_openai.keys``; the provider class is imported only when
a provider is built (``LazyFactory``), so commands that only read the config stay quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmspool.plugin_api import LazyFactory, RegisterProvider, hookimpl

from llmspool_openai.keys import KEYS

if TYPE_CHECKING:
    from llmspool_openai.provider import OpenAIProvider

__all__ = ["OpenAIProvider"]


def __getattr__(name: str) -> Any:
    # `from llmspool_openai import OpenAIProvider` keeps working, importing it on demand.
    if name == "OpenAIProvider":
        from llmspool_openai.provider import OpenAIProvider

        return OpenAIProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def llmspool_register_providers(register: RegisterProvider) -> None:
    register("openai", LazyFactory("llmspool_openai.provider:OpenAIProvider"), keys=KEYS)
