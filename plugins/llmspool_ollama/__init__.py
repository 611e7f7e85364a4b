"""The Ollama provider plugin: calls to a local (or remote) Ollama through its OpenAI-compatible
``/v1`` routes.

Registered through the ``llmspool`` entry-point group under the provider kind ``ollama``::

    [providers.ollama]
    plugin = "ollama"
    base_url = "http://127.0.0.1:11434/v1"
    api_key_env = ""
    models = ["llama3.2"]

Ollama has no files, batches or service tiers, so the provider is a plain
``llmspool.provider.Provider`` (not a ``BatchProvider``).
"""

from __future__ import annotations

from llmspool.hookspecs import RegisterProvider, hookimpl

from llmspool_ollama.provider import OllamaProvider

__all__ = ["OllamaProvider"]


@hookimpl
def llmspool_register_providers(register: RegisterProvider) -> None:
    register("ollama", OllamaProvider)
