"""The Ollama provider plugin: calls to a local (or remote) Ollama through its OpenAI-compatible
``/v1`` routes.

Registered through the ``llmspool`` entry-point group under the provider kind ``ollama``::

    [providers.ollama]
    plugin = "ollama"
    base_url = "http://127.0.0.1:11434/v1"
    api_key_env = ""
    models = ["llama3.2"]

Ollama has no files, batches or service tiers, so the provider is a plain
``llmspool.core.provider.Provider`` (not a ``BatchProvider``). Its config keys are declared in
``llmspool_ollama.keys``; the provider class is imported only when a provider is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmspool.plugin_api import LazyFactory, RegisterProvider, hookimpl

from llmspool_ollama.keys import KEYS

if TYPE_CHECKING:
    from llmspool_ollama.provider import OllamaProvider

__all__ = ["OllamaProvider"]


def __getattr__(name: str) -> Any:
    # `from llmspool_ollama import OllamaProvider` keeps working, importing it on demand.
    if name == "OllamaProvider":
        from llmspool_ollama.provider import OllamaProvider

        return OllamaProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def llmspool_register_providers(register: RegisterProvider) -> None:
    register("ollama", LazyFactory("llmspool_ollama.provider:OllamaProvider"), keys=KEYS)
