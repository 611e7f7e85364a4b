"""The Anthropic provider plugin: OpenAI-shaped chat completions served by Anthropic's
Messages API.

Registered through the ``llmspool`` entry-point group exactly like a third-party plugin, under
the provider kind ``anthropic``::

    [providers.anthropic]
    plugin = "anthropic"
    api_key_env = "ANTHROPIC_API_KEY"
    models = ["claude-sonnet-4-5"]

Programs keep speaking OpenAI's Chat Completions API to the daemon; the plugin translates each
request into Anthropic's Messages params and each answer (whole, streamed, or an error) back
into OpenAI's shape, so the daemon bills, caches and relays it like any other
(``llmspool_anthropic.translate``, ``.answers``, ``.stream``, ``.ratelimits``). It serves chat
completions only, on the standard tier. Its config keys are declared in
``llmspool_anthropic.keys``; the provider class is imported only when a provider is built
(``LazyFactory``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmspool.plugin_api import LazyFactory, RegisterProvider, hookimpl

from llmspool_anthropic.keys import KEYS

if TYPE_CHECKING:
    from llmspool_anthropic.provider import AnthropicProvider

__all__ = ["AnthropicProvider"]


def __getattr__(name: str) -> Any:
    # `from llmspool_anthropic import AnthropicProvider` works, importing it on demand.
    if name == "AnthropicProvider":
        from llmspool_anthropic.provider import AnthropicProvider

        return AnthropicProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def llmspool_register_providers(register: RegisterProvider) -> None:
    register("anthropic", LazyFactory("llmspool_anthropic.provider:AnthropicProvider"),
             keys=KEYS)
