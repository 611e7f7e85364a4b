"""The config keys the ``ollama`` provider kind declares for its ``[providers.NAME]`` tables:
its own default for ``base_url``, where ``ollama serve`` listens."""

from __future__ import annotations

from llmspool.plugin_api import ConfigKey

DEFAULT_BASE_URL = "http://127.0.0.1:11434/v1"
"""Where ``ollama serve`` listens by default; used when ``base_url`` is empty."""

BASE_URL = ConfigKey(
    "base_url", "str", DEFAULT_BASE_URL,
    "where Ollama serves its OpenAI-compatible API; without a path, /v1 is added",
)
KEYS = (BASE_URL,)
