"""The OpenAI provider plugin: standard and flex calls, and the Batch API (files and batches).

Registered through the ``llmspool`` entry-point group exactly like a third-party plugin, under
the provider kind ``openai`` (any OpenAI-compatible API can use it: set ``base_url``).
"""

from __future__ import annotations

from llmspool.hookspecs import RegisterProvider, hookimpl

from llmspool_openai.provider import OpenAIProvider

__all__ = ["OpenAIProvider"]


@hookimpl
def llmspool_register_providers(register: RegisterProvider) -> None:
    register("openai", OpenAIProvider)
